"""Restore blobs into a folder: plan safely, download to a temporary name, check the MD5,
then rename into place with the file's modification time; folder markers become folders."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from .checksums import file_md5
from .errors import describe, error_code
from .files import Problem, display_path
from .names import decode_path
from .retry import STOP, RunStopped, StorageUnavailable, stopped_error
from .storage import RemoteBlob
from .tiers import archived_reason, is_archived

TEMP_NAME_BYTES = 200  # of the file's name kept in its temporary name (".<name>.<8 hex>.part" <= 255 bytes)


class BlobEntry(NamedTuple):
    """A blob to restore, with the path it restores to (relative to the target)."""

    path: str
    size: int
    name: str
    content_md5: bytes | None
    mtime_ns: int | None
    where: str | None = None  # an earlier run's content: "snapshot:<time>" or "version:<id>" (history.read_kept)
    archived: bool = False  # listed in the Archive tier: unreadable until rehydrated, never downloaded


class FolderEntry(NamedTuple):
    """A folder-marker blob: a folder to create (relative to the target), with its time if stored."""

    path: str
    name: str
    mtime_ns: int | None


@dataclass
class RestorePlan:
    batches: list[list[BlobEntry]] = field(default_factory=list)
    refused: list[Problem] = field(default_factory=list)
    folders: list[FolderEntry] = field(default_factory=list)
    run: str = ""  # the backup run this plan restores, for people; empty: the current blobs

    @property
    def files(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def bytes(self) -> int:
        return sum(e.size for b in self.batches for e in b)


def unsafe_name_reason(path: str) -> str | None:
    """Why a decoded relative path must not be written under the target, or None if it is
    a legal POSIX path that stays inside. Absolute paths, `..`, `.` and empty segments, NUL
    and names over 255 bytes are refused. A backslash, a control character or bytes that
    are not UTF-8 (surrogate escapes) are ordinary in a Linux file name, so they pass."""
    if not path:
        return "empty name"
    if path.startswith("/"):
        return "absolute path"
    if "\0" in path:
        return "NUL in the name"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'..', '.' or empty path segment"
    if any(len(os.fsencode(p)) > 255 for p in parts):
        return "a path segment is longer than 255 bytes"
    return None


def plan_restore(blobs: Iterable[tuple[str, RemoteBlob]], prefix: str, max_files: int, max_bytes: int) -> RestorePlan:
    """Turn the blobs under `prefix` into batches of files to restore, each under the file
    name its blob name encodes; unsafe names are refused here (and checked again before
    any write)."""
    from .files import Batch, make_batches

    plan = RestorePlan()
    start = len(prefix) + 1 if prefix else 0
    entries = []
    for name, blob in blobs:
        path = decode_path(name[start:])
        if blob.folder or name.endswith("/"):
            _plan_folder(plan, name, path, blob)
            continue
        reason = unsafe_name_reason(path)
        if reason:
            plan.refused.append(Problem(display_path(path), f"refused, would not stay inside the target: {reason}"))
            continue
        # The file's own time as a tool stored it, else when the blob was written.
        mtime_ns = blob.mtime_ns if blob.mtime_ns is not None else blob.last_modified_ns
        entries.append(BlobEntry(path, blob.size, name, blob.content_md5, mtime_ns, archived=is_archived(blob.tier)))
    plan.batches = [Batch(b) for b in make_batches(entries, max_files, max_bytes)]
    return plan


def _plan_folder(plan: RestorePlan, name: str, path: str, blob: RemoteBlob) -> None:
    """A folder marker (metadata hdi_isfolder=true, or a name ending in '/') becomes a folder.
    Its Last-Modified is when the marker was written, not the folder's time: not used."""
    if blob.size:
        what = "folder marker (metadata hdi_isfolder)" if blob.folder else "name ending in '/'"
        plan.refused.append(Problem(display_path(path), f"refused: a {what} holds {blob.size} bytes"))
        return
    path = path[:-1] if path.endswith("/") else path
    if not path:
        return  # the marker of the prefix itself: the target
    reason = unsafe_name_reason(path)
    if reason:
        plan.refused.append(Problem(display_path(path), f"refused, would not stay inside the target: {reason}"))
        return
    plan.folders.append(FolderEntry(path, name, blob.mtime_ns))


class RestoreOutcome(NamedTuple):
    path: str
    status: str  # "restored", "unchanged", "failed"
    size: int = 0
    bytes_restored: int = 0
    reason: str = ""
    transient: bool = False
    unverified: bool = False
    ends_run: str = ""  # why the run cannot go on (storage went away, a stop), if that failed it


@dataclass
class RestoreBatchResult:
    files_restored: int = 0
    files_unchanged: int = 0
    bytes_total: int = 0
    bytes_restored: int = 0
    unverified: list[str] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    transient_failures: int = 0
    run_error: str = ""  # why the restore could not go on, if so

    @classmethod
    def from_outcomes(cls, outcomes: list[RestoreOutcome]) -> "RestoreBatchResult":
        r = cls()
        for o in outcomes:
            r.bytes_total += o.size
            if o.unverified:
                r.unverified.append(o.path)
            if o.status == "restored":
                r.files_restored += 1
                r.bytes_restored += o.bytes_restored
            elif o.status == "unchanged":
                r.files_unchanged += 1
            else:
                r.failed.append(Problem(o.path, o.reason))
                r.transient_failures += o.transient
                r.run_error = r.run_error or o.ends_run
        return r

    def as_cached(self) -> "RestoreBatchResult":
        return RestoreBatchResult(files_unchanged=self.files_restored + self.files_unchanged,
                                  bytes_total=self.bytes_total)


class _Refused(Exception):
    pass


def restore_batch(target: str, batch: list[BlobEntry], download: Callable[[str], Iterable[bytes]], *,
                  overwrite: bool = False, threads: int = 8,
                  rehydrate: Callable[[BlobEntry], str] | None = None) -> list[RestoreOutcome]:
    """Restore every blob of the batch; `download(name)` yields the blob's bytes;
    `rehydrate(entry)`, when given, asks for an archived blob's rehydration."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(lambda e: restore_file(target, e, download, overwrite=overwrite, rehydrate=rehydrate),
                             batch))


def restore_file(target: str, entry: BlobEntry, download, *, overwrite: bool = False,
                 rehydrate: Callable[[BlobEntry], str] | None = None) -> RestoreOutcome:
    """Restore one blob. Never writes outside `target`, never through a link, never
    leaves a file whose content does not match the blob's Content-MD5. An archived blob
    is never downloaded (Azure refuses: 409 BlobArchived): a file already the same is
    unchanged, any other fails with the fix, after `rehydrate(entry)` when given."""
    try:
        if STOP.is_set():
            raise stopped_error()
        reason = unsafe_name_reason(entry.path)
        if reason:
            raise _Refused(f"refused, would not stay inside the target: {reason}")
        parent = _safe_parent(target, entry.path.split("/")[:-1])
        dest = os.path.join(parent, entry.path.rsplit("/", 1)[-1])
        existing = _lstat(dest)
        if existing is not None:
            if stat.S_ISREG(existing.st_mode) and _same(dest, existing, entry):
                return RestoreOutcome(entry.path, "unchanged", size=entry.size)
            if not overwrite:
                raise _Refused("a different file already exists here: pass --overwrite to replace it")
            if stat.S_ISDIR(existing.st_mode):
                raise _Refused("a folder stands where this file belongs")
        if entry.archived:
            # A snapshot or version (not a current blob) cannot be rehydrated in place.
            kept = entry.where not in (None, "attic:")
            raise _Refused(rehydrate(entry) if rehydrate else archived_reason(kept=kept))
        unverified = _download_to(dest, entry, download)
        return RestoreOutcome(entry.path, "restored", size=entry.size, bytes_restored=entry.size,
                              unverified=unverified)
    except _Refused as exc:
        return RestoreOutcome(entry.path, "failed", size=entry.size, reason=str(exc))
    except (StorageUnavailable, RunStopped) as exc:  # the run's end, not this file's failure
        what = "stopped" if isinstance(exc, RunStopped) else "storage stopped answering"
        return RestoreOutcome(entry.path, "failed", size=entry.size, ends_run=str(exc),
                              reason=f"not restored: the run ended first ({what})")
    except Exception as exc:
        if error_code(exc) == "BlobNotFound":
            return RestoreOutcome(entry.path, "failed", size=entry.size, reason="blob was deleted during the restore")
        if error_code(exc) == "BlobArchived":  # archived after the listing
            return RestoreOutcome(entry.path, "failed", size=entry.size, reason=archived_reason())
        # Not transient for the task: the run's retry policy already tried storage again.
        return RestoreOutcome(entry.path, "failed", size=entry.size, reason=describe(exc))


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _safe_parent(target: str, parts: list[str]) -> str:
    """Create the folders of a path under `target`, refusing to pass through a link or a file."""
    path = target
    for part in parts:
        path = os.path.join(path, part)
        st = _lstat(path)
        if st is None:
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise _Refused(f"refused: {display_path(os.path.relpath(path, target))} is a symbolic link in the target")
        if not stat.S_ISDIR(st.st_mode):
            raise _Refused(f"a file stands where the folder {display_path(os.path.relpath(path, target))} belongs")
    return path


def _same(dest: str, st: os.stat_result, entry: BlobEntry) -> bool:
    if st.st_size != entry.size:
        return False
    if entry.mtime_ns is not None and st.st_mtime_ns == entry.mtime_ns:
        return True
    if entry.content_md5 is None:
        return False
    return file_md5(dest) == entry.content_md5


def _download_to(dest: str, entry: BlobEntry, download) -> bool:
    """Write the blob to a temporary file beside `dest`, check it, rename it into place.
    Returns True when the blob had no Content-MD5 to check against."""
    folder, name = os.path.split(dest)
    temp = os.path.join(folder, f".{_cut(name, TEMP_NAME_BYTES)}.{uuid.uuid4().hex[:8]}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        md5, size = hashlib.md5(), 0
        with os.fdopen(fd, "wb") as f:
            for chunk in (download(entry.name, entry.where) if entry.where else download(entry.name)):
                md5.update(chunk)
                size += len(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size != entry.size:
            raise _Refused(f"blob changed during the restore ({size} bytes read, {entry.size} listed): run again")
        if entry.content_md5 is not None and md5.digest() != entry.content_md5:
            raise _Refused("damaged blob: its content does not match its Content-MD5, not written")
        if entry.mtime_ns is not None:
            set_mtime(temp, entry.mtime_ns)
        os.replace(temp, dest)
    except BaseException:
        try:
            os.remove(temp)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        raise
    return entry.content_md5 is None


def _cut(name: str, limit: int) -> str:
    """The longest start of `name` whose file-system encoding fits in `limit` bytes, cut
    between characters (a surrogate escape stands for one byte of an undecodable name)."""
    if len(os.fsencode(name)) <= limit:
        return name
    size = 0
    for i, char in enumerate(name):
        size += len(os.fsencode(char))
        if size > limit:
            return name[:i]
    return name


_TIME_T_MAX = 2**63 - 1


def set_mtime(path: str, mtime_ns: int, *, follow_symlinks: bool = True) -> None:
    """Set a file's access and modification time. A time the platform cannot hold at
    nanosecond precision is set in whole seconds; one beyond its range is set to the
    nearest time it holds (the file system may clamp further, as ext4 does after 2446)."""
    try:
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=follow_symlinks)
        return
    except OverflowError:
        pass
    seconds = mtime_ns // 10**9
    for candidate in (seconds, max(-_TIME_T_MAX - 1, min(_TIME_T_MAX, seconds)),
                      max(-(2**31), min(2**31 - 1, seconds))):
        try:
            os.utime(path, (candidate, candidate), follow_symlinks=follow_symlinks)
            return
        except OverflowError:
            continue


def restore_folders(target: str, folders: list[FolderEntry]) -> RestoreBatchResult:
    """Create the folders of folder-marker blobs and give them their stored times. Runs
    after the files: writing a file into a folder changes the folder's time."""
    result = RestoreBatchResult()
    made = []
    for folder in sorted(folders, key=lambda f: f.path):
        try:
            reason = unsafe_name_reason(folder.path)
            if reason:
                raise _Refused(f"refused, would not stay inside the target: {reason}")
            made.append((_safe_parent(target, folder.path.split("/")), folder))
        except _Refused as exc:
            result.failed.append(Problem(display_path(folder.path) + "/", str(exc)))
        except OSError as exc:
            result.failed.append(Problem(display_path(folder.path) + "/", describe(exc)))
    for path, folder in made:  # after all are made: making a folder changes its parent's time
        if folder.mtime_ns is None:
            continue
        try:
            set_mtime(path, folder.mtime_ns, follow_symlinks=False)
        except OSError as exc:
            result.failed.append(Problem(display_path(folder.path) + "/", f"folder made, its time not set: {describe(exc)}"))
    return result
