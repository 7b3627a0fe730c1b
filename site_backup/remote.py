"""What the destination holds for one batch: one listing per folder instead of a request
per file. With storage far away a request per file would make a no-change run without
checkpoints take about as long as a full backup; a listing answers up to 5,000 names at once."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

from . import ahead
from .storage import BlobStore, RemoteBlob

PAGE = 5000  # List Blobs answers at most this many names a request
# The most blobs a destination may hold to be listed whole (flat) at the start of a run,
# 10 pages: memory stays a few MB, and a larger destination costs those pages only.
LISTED_AT_MOST = 10 * PAGE


def list_destination(store: BlobStore, prefix: str) -> dict[str, RemoteBlob] | None:
    """Every blob under `prefix` by name, from one flat listing, or None when there are
    more than LISTED_AT_MOST. A page answers up to 5,000 blobs, so a destination of a few
    thousand files costs one request, where a listing per folder costs one per folder."""
    found: dict[str, RemoteBlob] = {}
    for name, blob in store.list_folder(prefix, recursive=True):
        if len(found) >= LISTED_AT_MOST:
            return None
        found[name] = blob
    return found


def list_ahead(store: BlobStore, account_url: str, container: str, prefix: str) -> None:
    """Start `list_destination` of `store` (that account's container) under `prefix` in a
    thread now, for `listed_ahead` to take."""
    ahead.start(("listing", account_url, container, prefix), lambda: list_destination(store, prefix))


def listed_ahead(account_url: str, container: str, prefix: str) -> Future | None:
    """The listing `list_ahead` started of this folder in this process, taken (a second
    call gets None), or None when there is none."""
    return ahead.take(("listing", account_url, container, prefix))


class RemoteLookup:
    """`get(name)` for the blobs of one batch, each folder listed once, on first need.

    A folder's listing is narrowed to the longest prefix its wanted names share, and only
    those names are kept, so memory follows the batch, not the folder. When a folder holds
    far more blobs than the batch wants (a page per 1,000 wanted names, at least one, has
    been read and names are still unresolved), the rest are split by their next character
    and listed again, narrower, and a name left alone is asked for by itself: the cost
    stays within a few pages per part or a request per file, whatever the folder holds."""

    def __init__(self, store: BlobStore, names: Iterable[str], listed: dict[str, RemoteBlob] | None = None):
        """`listed`: the whole destination from `list_destination`, which then answers every
        name, with no request."""
        self.store = store
        self.listed = listed
        self._groups: dict[str, set[str]] = defaultdict(set)
        for name in names if listed is None else ():
            self._groups[_folder(name)].add(name)
        self._lock = threading.Lock()
        self._listings: dict[str, Future] = {}

    def prefetch(self, at_once: int = 8) -> "RemoteLookup":
        """Start listing every folder now, a few at a time: a file then waits for its own
        folder's listing only, not for those of every folder before it (with storage far
        away and many small folders, one after another adds up to seconds a batch)."""
        if self.listed is not None:
            return self
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
        if self.listed is not None:
            return self.listed.get(name)
        folder = _folder(name)
        with self._lock:
            future = self._listings.get(folder)
            mine = future is None
            if mine:
                future = self._listings[folder] = Future()
        if mine:
            self._groups.setdefault(folder, {name})
            self._fill(folder, future)
        found, unsettled = future.result()
        if name in found:
            return found[name]
        return self.store.get(name) if name in unsettled else None

    def _list(self, folder: str, wanted: set[str]) -> tuple[dict[str, RemoteBlob], set[str]]:
        """The wanted blobs found, and the wanted names the listings did not settle."""
        found: dict[str, RemoteBlob] = {}
        return found, self._read(folder, wanted, found)

    def _read(self, start: str, wanted: set[str], found: dict[str, RemoteBlob]) -> set[str]:
        """List from the longest prefix beyond `start` that the wanted names share, into
        `found`; the names left unsettled. When the budget runs out first (a folder far
        larger than the batch), the names still wanted are split by their next character
        and each part is listed on its own, narrower: a slice of a flat folder of 10^5
        blobs then costs a few listings, not a request per file; a lone name is left for
        `get`."""
        prefix = start + os.path.commonprefix([n[len(start):] for n in wanted])
        budget = PAGE * (1 + len(wanted) // 1000)
        seen = settled = 0
        for name, blob in self.store.list_folder(prefix):
            if name in wanted:
                found[name] = blob
                settled += 1
                if settled == len(wanted):
                    return set()
            seen += 1
            if seen >= budget:
                break
        else:
            return set()
        parts: dict[str, set[str]] = defaultdict(set)
        for name in wanted:
            if name not in found:
                parts[name[: len(prefix) + 1]].add(name)
        unsettled: set[str] = set()
        for part in parts.values():
            narrower = len(part) > 1 and os.path.commonprefix(list(part)) != prefix
            unsettled |= self._read(prefix, part, found) if narrower else part
        return unsettled


def _folder(name: str) -> str:
    """The folder part of a blob name, with its trailing '/' ('' at the top)."""
    return name[: name.rfind("/") + 1]
