"""What the destination holds for one batch: one listing per folder instead of a request
per file. With storage far away a request per file would make a no-change run without
checkpoints take about as long as a full backup; a listing answers up to 5,000 names at once."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

from .storage import BlobStore, RemoteBlob

PAGE = 5000  # List Blobs answers at most this many names a request


class RemoteLookup:
    """`get(name)` for the blobs of one batch, each folder listed once, on first need.

    A folder's listing is narrowed to the longest prefix its wanted names share, and only
    those names are kept, so memory follows the batch, not the folder. When a folder holds
    far more blobs than the batch wants (a page per 1,000 wanted names, at least one, has
    been read and names are still unresolved), the rest are asked for one by one: the
    cost stays within a page or a request per file, whatever the folder holds."""

    def __init__(self, store: BlobStore, names: Iterable[str]):
        self.store = store
        self._groups: dict[str, set[str]] = defaultdict(set)
        for name in names:
            self._groups[_folder(name)].add(name)
        self._lock = threading.Lock()
        self._listings: dict[str, Future] = {}

    def prefetch(self, at_once: int = 8) -> "RemoteLookup":
        """Start listing every folder now, a few at a time: a file then waits for its own
        folder's listing only, not for those of every folder before it (with storage far
        away and many small folders, one after another adds up to seconds a batch)."""
        with self._lock:
            todo = {folder: Future() for folder in self._groups if folder not in self._listings}
            self._listings.update(todo)
        if todo:
            pool = ThreadPoolExecutor(max_workers=min(at_once, len(todo)), thread_name_prefix="list")
            for folder, future in todo.items():
                pool.submit(self._fill, folder, future)
            pool.shutdown(wait=False)
        return self

    def _fill(self, folder: str, future: Future) -> None:
        try:
            future.set_result(self._list(folder, self._groups[folder]))
        except BaseException as exc:  # every file of the folder sees the same error
            future.set_exception(exc)

    def get(self, name: str) -> RemoteBlob | None:
        """The blob called `name`, or None when there is none."""
        folder = _folder(name)
        with self._lock:
            future = self._listings.get(folder)
            mine = future is None
            if mine:
                future = self._listings[folder] = Future()
        if mine:
            self._groups.setdefault(folder, {name})
            self._fill(folder, future)
        found, complete = future.result()
        if name in found:
            return found[name]
        return None if complete else self.store.get(name)

    def _list(self, folder: str, wanted: set[str]) -> tuple[dict[str, RemoteBlob], bool]:
        """The wanted blobs found, and whether the listing was read to its end."""
        budget = PAGE * (1 + len(wanted) // 1000)
        found: dict[str, RemoteBlob] = {}
        seen = 0
        for name, blob in self.store.list_folder(folder + os.path.commonprefix(
                [n[len(folder):] for n in wanted])):
            if name in wanted:
                found[name] = blob
                if len(found) == len(wanted):
                    return found, True
            seen += 1
            if seen >= budget:
                return found, False
        return found, True


def _folder(name: str) -> str:
    """The folder part of a blob name, with its trailing '/' ('' at the top)."""
    return name[: name.rfind("/") + 1]
