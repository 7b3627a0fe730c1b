"""Copy one batch of files to blob storage: compare, stream, verify, upload."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import stat
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from .checksums import md5_and_size
from .content_types import content_type as content_type_of
from .errors import FileChangedError, describe, error_code
from .file_pool import file_pool
from .in_flight import FILES_IN_FLIGHT
from .files import FileEntry, Problem, display_path, root_problem, special_file_reason
from .names import blob_name
from .remote import RemoteLookup
from .retry import STOP, RunStopped, StorageUnavailable, stopped_error
from .blob_metadata import MTIME_KEY, format_mtime
from .storage import BlobStore, RemoteBlob
from .units import MiB
from .writeback import may_still_be_written
MAX_BLOCKS = 50_000  # Azure's limit of committed blocks per blob

# Files above the block size but within the single-put size are held whole in memory while
# they go up: at most this many at once, so memory stays bounded (4 x 64 MiB by default).
_whole_large_files = threading.BoundedSemaphore(4)


@dataclass(frozen=True)
class CopyOptions:
    """How to copy; none of this is part of a batch's identity."""

    dry_run: bool = False
    check_remote: bool = True  # False when the destination held no blobs at the start
    follow_symlinks: bool = False
    files_in_flight: int = FILES_IN_FLIGHT  # at most, across all batches copying in this process (the level adapts below it)
    single_put_size: int = 64 * MiB  # files up to this size go up in one request (the SDK's default too)
    block_size: int = 8 * MiB  # larger files go up in blocks of this size
    blocks_in_flight: int = 4  # per large file
    root_id: tuple[int, int] | None = None  # the root's (device, inode) when it was listed
    # Paths whose blob is not what a checkpoint recorded (deleted or replaced by another
    # tool): compared by content only, as the stored mtime may have been copied with it.
    recheck: frozenset[str] = frozenset()
    access_tier: str | None = None  # the tier uploads are written in (Hot, Cool, Cold); None: the account's default

    @property
    def listing_suffices(self) -> bool:
        """A dry run against an empty destination: nothing to compare, nothing to read."""
        return self.dry_run and not self.check_remote


class FileOutcome(NamedTuple):
    path: str
    status: str  # "uploaded", "unchanged", "skipped" or "failed"
    bytes_uploaded: int = 0
    size: int = 0
    reason: str = ""
    transient: bool = False
    changed_retries: int = 0
    ends_run: str = ""  # why the run cannot go on (the root vanished, storage went away, a stop), if that failed it
    kept: str = ""  # an earlier blob was replaced: how its content was kept ("snapshot" or "version")
    md5: bytes | None = None  # of the content the blob now holds (uploaded or unchanged)
    mtime_ns: int | None = None  # the file's modification time this run saw
    version_id: str | None = None  # the version this run wrote, on accounts that keep versions


@dataclass
class BatchResult:
    """What happened to one batch; the value a checkpoint stores."""

    files_uploaded: int = 0
    files_unchanged: int = 0
    files_changed: int = 0  # uploaded over an earlier blob, whose content was kept first
    bytes_total: int = 0  # size of every regular file in the batch that was not skipped
    bytes_uploaded: int = 0
    retries: int = 0
    skipped: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    transient_failures: int = 0
    run_error: str = ""  # why the run could not go on (root vanished, storage went away, stopped), if so
    # (path, size, MD5, mtime_ns, version id) of every file backed up: the run manifest's
    # lines. None in checkpoints written before manifests existed (then they are looked up).
    entries: list[tuple] | None = None
    # The process's adaptive level when the batch ended, and its highest (0: not known).
    in_flight: int = 0
    in_flight_peak: int = 0

    @classmethod
    def from_outcomes(cls, outcomes: list[FileOutcome]) -> "BatchResult":
        result = cls(entries=[])
        for o in outcomes:
            if o.status in ("uploaded", "unchanged"):
                result.entries.append((o.path, o.size, o.md5, o.mtime_ns, o.version_id))
            result.retries += o.changed_retries
            result.bytes_total += o.size
            if o.status == "uploaded":
                result.files_uploaded += 1
                result.bytes_uploaded += o.bytes_uploaded
                result.files_changed += bool(o.kept)
            elif o.status == "unchanged":
                result.files_unchanged += 1
            elif o.status == "skipped":
                result.skipped.append(Problem(display_path(o.path), o.reason))
            else:
                result.failed.append(Problem(display_path(o.path), o.reason))
                result.transient_failures += o.transient
                if o.ends_run:
                    result.run_error = o.ends_run
        return result

    def as_cached(self) -> "BatchResult":
        """The same batch seen from a later run that reused its checkpoint: nothing was sent."""
        return BatchResult(
            files_unchanged=self.files_uploaded + self.files_unchanged,
            bytes_total=self.bytes_total,
            skipped=list(self.skipped),
            entries=getattr(self, "entries", None),
        )


def files_in_flight(options: CopyOptions) -> tuple[int, int]:
    """How many files this process copies at once now, and the most it has."""
    level = file_pool(options.files_in_flight, options.block_size).level
    return level.level, level.peak


def blob_name_problem(name: str) -> str | None:
    """Why Azure would refuse `name` (checked here because Azurite accepts more than Azure)."""
    if len(name) > 1024:
        return f"blob name is {len(name)} characters long, Azure allows 1024: shorten the path or the prefix"
    if name.count("/") + 1 > 254:
        return f"blob name has {name.count('/') + 1} path segments, Azure allows 254: move the file up"
    return None


class _NotRegular(Exception):
    pass


def copy_batch(
    root: str,
    batch: list[FileEntry],
    store: BlobStore,
    prefix: str,
    options: CopyOptions,
    done: dict[str, FileOutcome] | None = None,
    on_file: Callable[[FileOutcome], None] | None = None,
    listed: dict[str, RemoteBlob] | None = None,
) -> list[FileOutcome]:
    """Copy every file of `batch`, several at a time. Per-file problems become outcomes,
    never exceptions. Files in `done` (finished by an earlier attempt) are not redone.
    `listed`: the run's flat listing of the destination, which then answers what storage
    holds with no request."""
    done = done or {}
    # What the destination holds: the run's listing, else one listing per folder, only for files that need it.
    remote = RemoteLookup(store, (blob_name(prefix, f.path) for f in batch if f.path not in done), listed).prefetch() \
        if options.check_remote else None

    if options.listing_suffices:  # no I/O at all: threads would only add overhead
        outcomes = [done.get(entry.path) or _as_listed(prefix, entry) for entry in batch]
        if on_file:
            for outcome in outcomes:
                on_file(outcome)
        return outcomes
    pool = file_pool(options.files_in_flight, options.block_size)
    level = pool.level_for(store.retries.budget)

    def one(entry: FileEntry) -> FileOutcome:
        retried = store.retries.budget.retried
        outcome = copy_file(root, entry, store, prefix, options, remote)
        troubled = store.retries.budget.retried > retried
        if outcome.status == "uploaded" or troubled:  # an unchanged file says nothing of the link
            level.finished(troubled)
        if on_file:
            on_file(outcome)
        return outcome

    # Files above the block size jump the queue, largest first, whichever batch they are in:
    # queued behind another batch's many small files they would start late and finish last.
    # Smaller files keep batch order, so batches finish (and are checkpointed)
    # one after another rather than all near the end, which is what a crash would cost.
    order = sorted(range(len(batch)), key=lambda i: batch[i].size, reverse=True)
    futures, now = {}, {}
    for i in order:
        entry = batch[i]
        known = done.get(entry.path)
        if known is None:  # answered here, not by a pool thread: most files of a run without checkpoints
            known = _listed_unchanged(prefix, entry, remote, options)
            if known and on_file:
                on_file(known)
        if known:
            now[i] = known
            continue
        heavy = entry.size > options.block_size
        futures[i] = pool.submit(entry.size if heavy else 0, one, entry, weight=entry.size, heavy=heavy)
    try:
        return [now[i] if i in now else futures[i].result() for i in range(len(batch))]
    finally:  # after an unexpected error, files not yet started stay unstarted
        for future in futures.values():
            future.cancel()


def _listed_unchanged(prefix: str, entry: FileEntry, remote: RemoteLookup | None,
                      options: CopyOptions) -> FileOutcome | None:
    """The outcome of a file the run's flat listing shows stored with the size and
    modification time the walk saw, with no request and no read (rclone's rule); else None."""
    if remote is None or remote.listed is None or entry.path in options.recheck or STOP.is_set():
        return None
    found = remote.listed.get(blob_name(prefix, entry.path))
    if not _same_by_mtime(found, entry.size, entry.mtime_ns):
        return None
    return _unchanged(entry.path, found, entry.size, entry.mtime_ns)


def _unchanged(path: str, found: RemoteBlob, size: int, mtime_ns: int, attempt: int = 0) -> FileOutcome:
    """The outcome of a file its blob `found` already holds."""
    return FileOutcome(path, "unchanged", size=size, changed_retries=attempt, md5=found.content_md5,
                       mtime_ns=mtime_ns, version_id=found.version_id)


def _refused(prefix: str, entry: FileEntry) -> FileOutcome | None:
    """The failed outcome of a file whose blob name Azure would refuse, else None."""
    problem = blob_name_problem(blob_name(prefix, entry.path))
    return FileOutcome(entry.path, "failed", 0, entry.size, problem) if problem else None


def _as_listed(prefix: str, entry: FileEntry) -> FileOutcome:
    """What copying `entry` to an empty destination would do, from the listing alone."""
    return _refused(prefix, entry) or FileOutcome(entry.path, "uploaded", entry.size, entry.size)


def copy_file(root: str, entry: FileEntry, store: BlobStore, prefix: str, options: CopyOptions,
              remote: RemoteLookup | None = None) -> FileOutcome:
    """Back up one file; a file that changes while read is tried once more. `remote` answers
    what the destination held at the start; a second attempt asks the store itself."""
    path = entry.path
    if options.listing_suffices:
        return _as_listed(prefix, entry)
    refused = _refused(prefix, entry)
    if refused:
        return refused
    if STOP.is_set():
        return _not_stored(entry, stopped_error())
    for attempt in (0, 1):
        try:
            return _copy_once(root, entry, store, prefix, options, attempt, remote if attempt == 0 else None)
        except FileChangedError:
            if attempt == 1:
                return FileOutcome(
                    path, "failed", size=entry.size, transient=True, changed_retries=1,
                    reason="changed while being read, twice: back it up again once it stops changing",
                )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            lost = root_problem(root, options.root_id)
            if lost:
                return FileOutcome(path, "failed", size=entry.size, reason=lost, ends_run=lost)
            if isinstance(exc, FileNotFoundError):
                return FileOutcome(path, "skipped", reason="vanished before it could be copied")
            return FileOutcome(path, "failed", size=entry.size, reason=describe(exc))
        except _NotRegular as exc:
            return FileOutcome(path, "skipped", reason=str(exc))
        except (StorageUnavailable, RunStopped) as exc:  # the run's end, not this file's failure
            return _not_stored(entry, exc)
        except Exception as exc:  # every other problem is this file's alone
            if attempt == 0 and error_code(exc) == "InvalidBlockList":
                # Another upload of the same blob committed first and discarded our
                # staged blocks; look again (the blob probably matches now).
                continue
            # Not transient for the task: the run's retry policy already tried storage again.
            return FileOutcome(path, "failed", size=entry.size, reason=describe(exc))
    raise AssertionError("unreachable")


def _not_stored(entry: FileEntry, exc: Exception) -> FileOutcome:
    """A file the run ended before: failed (never counted as backed up), with why the run ended."""
    what = "stopped" if isinstance(exc, RunStopped) else "storage stopped answering"
    return FileOutcome(entry.path, "failed", size=entry.size, ends_run=str(exc),
                       reason=f"not backed up: the run ended first ({what})")


def _open_regular(abs_path: str, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(abs_path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotRegular("became a symbolic link after it was listed, not followed") from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _NotRegular(special_file_reason(st.st_mode))
    return fd, st


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _copy_once(root, entry, store, prefix, options, attempt, remote=None) -> FileOutcome:
    name = blob_name(prefix, entry.path)
    fd, before = _open_regular(os.path.join(root, entry.path), options.follow_symlinks)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = before.st_size
        found = (remote or store).get(name) if options.check_remote else None
        if options.check_remote and _matches_remote(found, f, before, by_mtime=entry.path not in options.recheck):
            return _unchanged(entry.path, found, size, before.st_mtime_ns, attempt)
        if options.dry_run:
            return FileOutcome(entry.path, "uploaded", bytes_uploaded=size, size=size, changed_retries=attempt)
        content_type = content_type_of(entry.path)
        metadata = {MTIME_KEY: format_mtime(before.st_mtime_ns)}
        reread = may_still_be_written(before)
        kept: list[str] = []

        def keep_previous() -> None:
            """Called once the new content is read and checked, just before it replaces the blob."""
            kept[:] = [keep_previous_content(store, name, found)]

        if size <= options.block_size:
            md5, version = _put_whole(f, before, store, name, content_type, metadata, reread, keep_previous)
        elif size <= options.single_put_size:
            # One request: one MD5 pass over the data instead of two (the blob's and each
            # block's), so less CPU for the same upload.
            with _whole_large_files:
                md5, version = _put_whole(f, before, store, name, content_type, metadata, reread, keep_previous)
        else:
            md5, version = _upload_blocks(f, before, store, name, options, content_type, metadata, reread,
                                          keep_previous)
    return FileOutcome(entry.path, "uploaded", bytes_uploaded=size, size=size, changed_retries=attempt,
                       kept=kept[0] if kept else "", md5=md5, mtime_ns=before.st_mtime_ns, version_id=version)


def keep_previous_content(store: BlobStore, name: str, found: RemoteBlob | None) -> str:
    """Keep what the blob holds before it is replaced: "" when there is no earlier blob,
    "version" when the account keeps versions by itself (blob versioning on: then a
    snapshot would keep the same content twice), else "snapshot" after Snapshot Blob.

    Versioning is seen two ways, both without a request of its own: a listing on such an
    account names each blob's current version (`VersionId`), and every write answers with
    `x-ms-version-id` (remembered for the rest of the run). Azurite implements neither
    versioning nor these answers, so on it every replaced blob is snapshotted; the version
    path is tested against the in-memory store only."""
    if found is None or found.folder:
        return ""
    if found.version_id or store.versioning:
        return "version"
    store.snapshot(name)
    return "snapshot"


def _put_whole(f, before: os.stat_result, store: BlobStore, name, content_type, metadata, reread=False,
               keep_previous: Callable[[], None] = lambda: None) -> tuple[bytes, str | None]:
    """Upload the file in one request; its MD5 and the version written (None without versioning)."""
    data = f.read(before.st_size + 1)
    _check_unchanged(f, before, len(data))
    if reread:
        _check_reads_the_same(f, before, data)
    md5 = hashlib.md5(data).digest()
    keep_previous()
    return md5, store.put(name, data, md5=md5, content_type=content_type, metadata=metadata)


def _check_reads_the_same(f, before: os.stat_result, data: bytes) -> None:
    """Read the file again and compare it with `data`, which was read for the upload."""
    f.seek(0)
    offset = 0
    for chunk in iter(lambda: f.read(MiB), b""):
        if chunk != data[offset : offset + len(chunk)]:
            raise FileChangedError()
        offset += len(chunk)
    _check_unchanged(f, before, offset)


def _check_hashes_the_same(f, before: os.stat_result, md5_digest: bytes) -> None:
    """Read the file again and compare its MD5 with the one taken while uploading."""
    f.seek(0)
    md5, total = md5_and_size(f)
    if md5 != md5_digest:
        raise FileChangedError()
    _check_unchanged(f, before, total)


def _same_by_mtime(remote: RemoteBlob | None, size: int, mtime_ns: int) -> bool:
    """The blob has the file's size and the modification time stored with it (rclone's rule)."""
    return remote is not None and remote.size == size and remote.mtime_ns == mtime_ns


def _matches_remote(remote, f, st, by_mtime: bool = True) -> bool:
    if remote is None or remote.size != st.st_size:
        return False
    if by_mtime and _same_by_mtime(remote, st.st_size, st.st_mtime_ns):
        return True
    if remote.content_md5 is None:
        return False
    md5, _ = md5_and_size(f)
    f.seek(0)
    return md5 == remote.content_md5


def _check_unchanged(f, before: os.stat_result, bytes_read: int) -> None:
    after = os.fstat(f.fileno())
    if _identity(after) != _identity(before) or bytes_read != before.st_size:
        raise FileChangedError()


def _upload_blocks(f, before, store: BlobStore, name, options: CopyOptions, content_type, metadata,
                   reread=False, keep_previous: Callable[[], None] = lambda: None) -> tuple[bytes, str | None]:
    """Stream a large file as blocks, a few in flight, hashing the whole file as it is read;
    the blob only appears (commit) once every block landed and the file did not change."""
    block_size = max(options.block_size, -(-before.st_size // MAX_BLOCKS))
    # A fresh id per upload, so two runs uploading the same blob never mix their blocks.
    upload_id = uuid.uuid4().hex[:16]
    md5, block_ids, total = hashlib.md5(), [], 0
    in_flight: deque = deque()
    with ThreadPoolExecutor(max_workers=max(1, options.blocks_in_flight), thread_name_prefix="block") as pool:
        while True:
            data = f.read(block_size)
            if not data:
                break
            md5.update(data)
            total += len(data)
            block_id = base64.b64encode(f"{upload_id}{len(block_ids):06d}".encode()).decode()
            block_ids.append(block_id)
            in_flight.append(pool.submit(store.stage_block, name, block_id, data))
            if len(in_flight) >= options.blocks_in_flight:
                in_flight.popleft().result()
        for future in wait(in_flight).done:
            future.result()
    _check_unchanged(f, before, total)
    if reread:
        _check_hashes_the_same(f, before, md5.digest())
    keep_previous()
    return md5.digest(), store.commit_blocks(name, block_ids, md5=md5.digest(), content_type=content_type,
                                             metadata=metadata)
