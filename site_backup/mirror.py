"""Mirror mode (--delete-missing): after a complete run, the blobs of files the tree no
longer has are deleted, so the container's current view equals the tree, while history
keeps their content.

What decides a deletion, following rclone's `sync`:
- Nothing is deleted after a run with any failure (an unreadable folder or file, a file
  that could not be uploaded, a failed run): a file the walk could not see would look
  deleted. rclone refuses the same way ("not deleting files as there were IO errors").
- Files left out by --include/--exclude are not deleted: a filter says what this run
  looks at, not what the tree lacks (rclone's sync deletes only files the filters match).
- Paths the walk saw but skipped (links not followed, special files, files that vanished
  while listed) keep their blobs, and so does everything under a skipped link.
- Only blobs whose names this tool would write for some path are candidates: folder
  markers (`hdi_isfolder`), names ending in `/` and names that do not decode and encode
  back to themselves are another tool's and stay. Another destination nested under this
  prefix (one with run manifests of its own) is left alone.
- Nothing is deleted, and the run fails (exit 2), when the walk found no file while the
  destination holds files it would delete (an unmounted share looks exactly like an empty
  folder), or when more would go than --max-delete allows (a count, or a share of the
  destination's files; 50% by default, as rclone's bisync). The whole destination is
  listed and counted before the first delete.

Concurrent writers: every delete, and the copy of the current content to the attic, is
conditional on the ETag this run listed (If-Match, x-ms-source-if-match). A blob another
run rewrote in between answers 412 and is kept, and the summary says so.

Keeping the content: on Azure a blob with snapshots cannot be deleted without them (Delete
Blob answers 409 SnapshotsPresent; Azurite too), so snapshots cannot keep a deleted file.
Without versioning, the blob's snapshots and then its current content are copied (Copy
Blob, inside the account, no download) into the history container as
`attic/<quoted prefix>/<blob name>`, older contents as that blob's snapshots; only then
are the blob and its snapshots deleted. With versioning on and no snapshots, Delete Blob
alone keeps the content as a previous version.

Memory: the walk's paths are kept while the backup streams (each path's string, about
100 bytes a file, in mirror mode only) and sorted once; the destination is listed page by
page (5,000 blobs a page), each blob looked up by bisection. The blobs to delete are held
from the counting listing up to HELD_FOR_DELETION, past which the deletions list again.
Neither the container's size nor its history is ever held whole.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import quote, unquote

from .errors import ConfigurationError, describe, error_code, status_of
from .files import FileListing, Problem, display_path
from .globs import compile_patterns
from .names import attic_folder, blob_folder, decode_path, encode_path
from .retry import RunStopped, StorageUnavailable
from .units import count


@dataclass
class MirrorResult:
    """What a deletion pass did (or, in a dry run, would do)."""

    deleted: list[str] = field(default_factory=list)  # paths relative to the root, printable
    bytes_deleted: int = 0
    failed: list[Problem] = field(default_factory=list)
    blocked: str = ""  # why nothing was deleted: a failure in the run
    refused: str = ""  # why nothing was deleted: the walk found no file, or more would go than --max-delete allows
    changed: list[Problem] = field(default_factory=list)  # changed (or deleted) by another writer meanwhile: kept


def blocker(listing: FileListing, outcome: str, files_failed: int) -> str:
    """Why this run may not delete anything, or '' when it may."""
    if outcome == "failed" or listing.walking:
        return "the run failed, so the tree was not seen whole"
    if listing.failed:
        first = listing.failed[0]
        n = len(listing.failed)
        what = "1 folder or file" if n == 1 else f"{n} folders or files"
        return (f"{what} could not be read (first: {first.path}: {first.reason}), "
                "so a file there would look deleted; fix that and run again")
    if files_failed:
        return f"{count(files_failed, 'file')} failed; run again once every file is backed up"
    return ""


def excluded(path: str, includes, excludes) -> bool:
    """Whether the walk leaves `path` out by the patterns: a folder on its way excluded (as
    the walk tests it, with and without a trailing '/'), the file itself excluded, or not
    included."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        folder = "/".join(parts[:i])
        if any(p.match(folder) or p.match(folder + "/") for p in excludes):
            return True
    return (bool(includes) and not any(p.match(path) for p in includes)) or any(p.match(path) for p in excludes)


def _within(sorted_paths: list[str], path: str) -> bool:
    """Whether `path` is in `sorted_paths`, or under one of them (a skipped link to a folder)."""
    i = bisect.bisect_right(sorted_paths, path)
    if i and sorted_paths[i - 1] == path:
        return True
    parts = path.split("/")
    for n in range(1, len(parts)):
        folder = "/".join(parts[:n])
        j = bisect.bisect_left(sorted_paths, folder)
        if j < len(sorted_paths) and sorted_paths[j] == folder:
            return True
    return False


def nested_destinations(history_store, prefix: str) -> list[str]:
    """Prefixes of other destinations under `prefix` that have run manifests, as blob-name
    prefixes ending in '/': their blobs are theirs."""
    own = runs_folder_name(prefix)
    found = set()
    try:
        for name, _, _ in history_store.list_metadata("runs/"):
            folder = name[len("runs/"):].split("/", 1)[0]
            other = unquote(folder)[1:]
            if folder != own and (not prefix or other.startswith(prefix + "/")):
                found.add(other + "/")
    except Exception as exc:
        if error_code(exc) != "ContainerNotFound":
            raise
    return sorted(found)


def runs_folder_name(prefix: str) -> str:
    return quote("/" + prefix, safe="")


def owned_blobs(store, prefix: str, listing: FileListing, include: Iterable[str] = (),
                exclude: Iterable[str] = (), nested: Iterable[str] = (), walked: Iterable[str] | None = None
                ) -> Iterator[tuple[str, str, int, object, bool]]:
    """(blob name, path, size, the listed blob, whether its file is gone) of every blob
    under the prefix that is this destination's (the rules in this module's docstring).
    `walked`: the paths a streamed walk saw (its listing keeps no batches); by default, the
    listing's batches."""
    walked = sorted(walked if walked is not None else (f.path for batch in listing.batches for f in batch))
    skipped = sorted(p.path for p in listing.skipped)
    includes, excludes = compile_patterns(include), compile_patterns(exclude)
    nested = tuple(nested)
    start = blob_folder(prefix)
    for name, remote in store.list(start):
        rel = name[len(start):]
        if remote.folder or not rel or rel.endswith("/") or any(name.startswith(n) for n in nested):
            continue
        path = decode_path(rel)
        if encode_path(path) != rel:
            continue  # not a name this tool writes
        i = bisect.bisect_left(walked, path)
        gone = not (i < len(walked) and walked[i] == path) and not (
            (skipped and _within(skipped, display_path(path))) or excluded(path, includes, excludes))
        yield name, path, remote.size, remote, gone


def missing_blobs(store, prefix: str, listing: FileListing, include: Iterable[str] = (),
                  exclude: Iterable[str] = (), nested: Iterable[str] = (),
                  walked: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, object]]:
    """(blob name, path, size, the listed blob) of every blob under the prefix whose file
    the tree no longer has."""
    for name, path, size, remote, gone in owned_blobs(store, prefix, listing, include, exclude, nested, walked):
        if gone:
            yield name, path, size, remote


DEFAULT_MAX_DELETE = "50%"
HELD_FOR_DELETION = 100_000  # candidates kept from the deciding listing (~200 bytes each); past it, listed again


@dataclass(frozen=True)
class DeleteLimit:
    """--max-delete: the most blobs one run may delete, a count ("100") or a share of the
    destination's files ("50%"). "100%" is the only value that lets a run whose walk found
    no file delete (it would delete everything)."""

    text: str
    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: int | str) -> "DeleteLimit":
        """The limit `value` says; ConfigurationError naming the two forms when it is neither."""
        text = str(value).strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if 0 <= percent <= 100:
                    return cls(text, percent=percent)
            elif not isinstance(value, bool):
                count = int(text)
                if count >= 0:
                    return cls(text, count=count)
        except ValueError:
            pass
        raise ConfigurationError(f"--max-delete {value!r} is neither a count of files (such as 100) nor a share of "
                                 f"the destination's files from 0% to 100% (such as 50%): give one of them")

    @property
    def everything(self) -> bool:
        return self.percent == 100

    def allowed(self, held: int) -> int:
        """How many of `held` files one run may delete."""
        return self.count if self.count is not None else math.floor(held * self.percent / 100 + 1e-9)


def refusal(limit: DeleteLimit, files_walked: int, would_delete: int, held: int) -> str:
    """Why a run must delete nothing although the tree lacks `would_delete` of the
    destination's `held` files, or '' when it may go ahead."""
    if not would_delete:
        return ""
    if not files_walked and not limit.everything:
        return (f"the walk found no file in the root, while the destination holds {count(would_delete, 'file')} this run "
                "would delete: a share or disk that is not mounted looks like this. Check the root folder; to "
                "delete them all on purpose, pass --max-delete 100% (flow parameter max_delete)")
    if would_delete > limit.allowed(held):
        share = f"{100 * would_delete / held:.0f}%" if held else "all"
        return (f"this run would delete {would_delete} of the destination's {count(held, 'file')} ({share}), more than "
                f"--max-delete {limit.text} allows: check the root folder and --include/--exclude (a wrong or "
                f"partly mounted folder looks like this); if these deletions are meant, pass --max-delete "
                f"{would_delete} (or 100%; flow parameter max_delete)")
    return ""


def delete_missing(store, history_store, prefix: str, listing: FileListing, *, include=(), exclude=(),
                   dry_run: bool = False, workers: int = 8, walked: Iterable[str] | None = None,
                   max_delete: int | str = DEFAULT_MAX_DELETE) -> MirrorResult:
    """Delete (or, in a dry run, list) the blobs of files the tree no longer has, keeping
    their content first, `workers` blobs at a time; nothing at all (`refused` says why)
    when the walk found no file or more would go than `max_delete` allows. Each delete is
    conditional on the blob's listed ETag: a blob another writer changed meanwhile is kept
    (`changed`). A blob that cannot be kept or deleted is a failed file, and the others go
    on; once the run is stopped or storage stops answering, no further blob is started."""
    limit = DeleteLimit.parse(max_delete)
    walked = sorted(walked if walked is not None else (f.path for batch in listing.batches for f in batch))
    result = MirrorResult()
    nested = nested_destinations(history_store, prefix)
    # The whole destination is listed and counted before anything is deleted.
    held = would_delete = 0
    found: list | None = []
    for name, path, size, remote, gone in owned_blobs(store, prefix, listing, include, exclude, nested, walked):
        held += 1
        if gone:
            would_delete += 1
            if found is not None:
                found.append((name, path, size, remote))
                if len(found) > HELD_FOR_DELETION:
                    found = None
    result.refused = refusal(limit, len(walked), would_delete, held)
    if result.refused:
        return result
    if found is None:  # too many to hold: listed again, and no more deleted than were counted
        found = itertools.islice(missing_blobs(store, prefix, listing, include, exclude, nested, walked), would_delete)
    ended = threading.Event()

    def one(name, path, size, remote) -> None:
        if not dry_run:
            if ended.is_set():
                return
            try:
                kept = remove_keeping_history(store, history_store, prefix, name, remote)
            except Exception as exc:
                if isinstance(exc, (RunStopped, StorageUnavailable)):
                    ended.set()
                with lock:
                    result.failed.append(Problem(display_path(path), f"not deleted: {describe(exc)}"))
                return
            if kept in CHANGED_MEANWHILE:
                with lock:
                    result.changed.append(Problem(display_path(path), CHANGED_MEANWHILE[kept]))
                return
        with lock:
            result.deleted.append(display_path(path))
            result.bytes_deleted += size

    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="delete") as pool:
        pending: set = set()
        for candidate in found:
            if ended.is_set():
                break
            pending.add(pool.submit(one, *candidate))
            if len(pending) >= 4 * workers:  # a bounded window of requests in flight
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
        for future in pending:
            future.result()
    result.deleted.sort()
    result.failed.sort()
    result.changed.sort()
    return result


# What remove_keeping_history found when a condition failed (412), as the summary says it.
CHANGED_MEANWHILE = {
    "changed": "changed by another writer since this run listed it: kept",
    "gone": "deleted by another writer since this run listed it",
}


def remove_keeping_history(store, history_store, prefix: str, name: str, remote=None) -> str:
    """Delete the blob `name` once its content is kept: "version" when the account keeps a
    previous version by itself, "attic" after copying it (and its snapshots) to the history
    container. The copy of the current content and the delete are conditional on the ETag
    the run listed (`remote.etag`): when another writer changed the blob since, the answer
    is 412 and the blob stays ("changed"; "gone" when someone else deleted it first)."""
    etag = getattr(remote, "etag", None)
    snapshots = sorted(k.snapshot for k in store.list_kept(name) if k.name == name and k.snapshot)
    try:
        if not snapshots and (store.versioning or getattr(remote, "version_id", None)):
            store.delete(name, if_match=etag)
            return "version"
        attic = attic_folder(prefix) + name
        try:
            exists = history_store.get(attic) is not None
        except Exception as exc:
            if error_code(exc) != "ContainerNotFound":
                raise
            history_store.create_container()  # a run without a manifest (or lock) made none yet
            exists = False
        for snapshot in [*snapshots, None]:  # oldest first, the current content last
            if exists:
                history_store.snapshot(attic)  # the attic's earlier content stays as its snapshot
            # A snapshot never changes; the current content is copied only while it is the one listed.
            history_store.copy_in(attic, store.source_url(name, snapshot), source_etag=None if snapshot else etag)
            exists = True
    except Exception as exc:
        # Any 412: Azure documents SourceConditionNotMet for a failed source condition,
        # Azurite answers ConditionNotMet (as it does for a blob already gone).
        if status_of(exc) != 412:
            raise
        return "changed" if store.get(name) is not None else "gone"
    try:
        store.delete_with_snapshots(name, if_match=etag)
    except Exception as exc:
        if status_of(exc) != 412:
            raise
        if store.get(name) is not None:
            return "changed"
        # Gone, after its listed content reached the attic: deleted as asked. (Azurite
        # answers If-Match on a missing blob 412 ConditionNotMet, HTTP's rule; a 404, as
        # Azure may answer, is "gone already" in delete_with_snapshots.)
    return "attic"

