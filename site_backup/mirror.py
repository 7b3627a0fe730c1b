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

Keeping the content: on Azure a blob with snapshots cannot be deleted without them (Delete
Blob answers 409 SnapshotsPresent; Azurite too), so snapshots cannot keep a deleted file.
Without versioning, the blob's snapshots and then its current content are copied (Copy
Blob, inside the account, no download) into the history container as
`attic/<quoted prefix>/<blob name>`, older contents as that blob's snapshots; only then
are the blob and its snapshots deleted. With versioning on and no snapshots, Delete Blob
alone keeps the content as a previous version.

Memory: the walk's paths are kept while the backup streams (each path's string, about
100 bytes a file, in mirror mode only) and sorted once and the destination is listed page by page (5,000 blobs a page), each blob looked
up by bisection. Neither the container's size nor its history is ever held whole.
"""

from __future__ import annotations

import bisect
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import quote, unquote

from .errors import describe, error_code
from .files import FileListing, Problem, compile_patterns, display_path
from .names import decode_path, encode_path
from .retry import RunStopped, StorageUnavailable


def attic_folder(prefix: str) -> str:
    """Where the content of deleted files goes in the history container, per destination."""
    return f"attic/{quote('/' + prefix, safe='')}/"


@dataclass
class MirrorResult:
    """What a deletion pass did (or, in a dry run, would do)."""

    deleted: list[str] = field(default_factory=list)  # paths relative to the root, printable
    bytes_deleted: int = 0
    failed: list[Problem] = field(default_factory=list)
    blocked: str = ""  # why nothing was deleted


def blocker(listing: FileListing, outcome: str, files_failed: int) -> str:
    """Why this run may not delete anything, or '' when it may."""
    if outcome == "failed" or listing.walking:
        return "the run failed, so the tree was not seen whole"
    if listing.failed:
        first = listing.failed[0]
        return (f"{len(listing.failed)} folder(s) or file(s) could not be read (first: {first.path}: {first.reason}), "
                "so a file there would look deleted; fix that and run again")
    if files_failed:
        return f"{files_failed} file(s) failed; run again once every file is backed up"
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


def missing_blobs(store, prefix: str, listing: FileListing, include: Iterable[str] = (),
                  exclude: Iterable[str] = (), nested: Iterable[str] = (),
                  walked: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, object]]:
    """(blob name, path, size, the listed blob) of every blob under the prefix whose file
    the tree no longer has, by the rules in this module's docstring. `walked`: the paths a
    streamed walk saw (its listing keeps no batches); by default, the listing's batches."""
    walked = sorted(walked if walked is not None else (f.path for batch in listing.batches for f in batch))
    skipped = sorted(p.path for p in listing.skipped)
    includes, excludes = compile_patterns(include), compile_patterns(exclude)
    nested = tuple(nested)
    start = f"{prefix}/" if prefix else ""
    for name, remote in store.list(start):
        rel = name[len(start):]
        if remote.folder or not rel or rel.endswith("/") or any(name.startswith(n) for n in nested):
            continue
        path = decode_path(rel)
        if encode_path(path) != rel:
            continue  # not a name this tool writes
        i = bisect.bisect_left(walked, path)
        if i < len(walked) and walked[i] == path:
            continue
        if (skipped and _within(skipped, display_path(path))) or excluded(path, includes, excludes):
            continue
        yield name, path, remote.size, remote


def delete_missing(store, history_store, prefix: str, listing: FileListing, *, include=(), exclude=(),
                   dry_run: bool = False, workers: int = 8, walked: Iterable[str] | None = None) -> MirrorResult:
    """Delete (or, in a dry run, list) the blobs of files the tree no longer has, keeping
    their content first, `workers` blobs at a time. A blob that cannot be kept or deleted
    is a failed file, and the others go on; once the run is stopped or storage stops
    answering, no further blob is started."""
    result = MirrorResult()
    nested = nested_destinations(history_store, prefix)
    ended = threading.Event()

    def one(name, path, size, remote) -> None:
        if not dry_run:
            if ended.is_set():
                return
            try:
                remove_keeping_history(store, history_store, prefix, name, remote)
            except Exception as exc:
                if isinstance(exc, (RunStopped, StorageUnavailable)):
                    ended.set()
                with lock:
                    result.failed.append(Problem(display_path(path), f"not deleted: {describe(exc)}"))
                return
        with lock:
            result.deleted.append(display_path(path))
            result.bytes_deleted += size

    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="delete") as pool:
        pending: set = set()
        for found in missing_blobs(store, prefix, listing, include, exclude, nested, walked):
            if ended.is_set():
                break
            pending.add(pool.submit(one, *found))
            if len(pending) >= 4 * workers:  # a bounded window: the listing is never held whole
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
        for future in pending:
            future.result()
    result.deleted.sort()
    result.failed.sort()
    return result


def remove_keeping_history(store, history_store, prefix: str, name: str, remote=None) -> str:
    """Delete the blob `name` once its content is kept: "version" when the account keeps a
    previous version by itself, "attic" after copying it (and its snapshots) to the history
    container."""
    snapshots = sorted(k.snapshot for k in store.list_kept(name) if k.name == name and k.snapshot)
    if not snapshots and (store.versioning or getattr(remote, "version_id", None)):
        store.delete(name)
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
        history_store.copy_in(attic, store.source_url(name, snapshot))
        exists = True
    store.delete_with_snapshots(name)
    return "attic"


def wait_for_copy(status: str, poll, budget=None, interval: float = 0.5) -> None:
    """Wait until a Copy Blob that answered `status` has ended; `poll()` gives the status
    now. A copy inside one account usually ends at once; Azure may still answer pending."""
    while status == "pending":
        if budget is not None:
            budget.check()
        time.sleep(interval)
        status = poll()
    if status != "success":
        raise RuntimeError(f"the copy to the history container ended {status!r}")

