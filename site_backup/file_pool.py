"""The process-wide pool of threads that copy files, highest priority first."""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from typing import Callable


class FilePool:
    """Threads that copy files, highest priority first across every batch that uses them,
    ties in the order they were queued. Batches copying at the same time share one pool, so
    one batch alone can use all of it and many cannot exceed it."""

    def __init__(self, workers: int):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # ties keep submission order; never compares callables
        for i in range(max(1, workers)):
            # Daemon: idle workers must not keep a finished process alive; every submitter
            # waits for its own futures, so no work is cut short.
            threading.Thread(target=self._work, name=f"copy_{i}", daemon=True).start()

    def submit(self, priority: int, fn: Callable, *args) -> Future:
        """Queue `fn(*args)`; a higher `priority` starts sooner."""
        future: Future = Future()
        self._queue.put((-priority, next(self._order), future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            _, _, future, fn, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the submitter, as an executor does
                future.set_exception(exc)


_pools_lock = threading.Lock()
_pools: dict[int, FilePool] = {}


def file_pool(limit: int) -> FilePool:
    """The process-wide pool of `limit` file-copying threads."""
    with _pools_lock:
        if limit not in _pools:
            _pools[limit] = FilePool(limit)
        return _pools[limit]
