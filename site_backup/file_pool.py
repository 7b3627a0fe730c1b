"""The process-wide pool of threads that copy files, highest priority first, as many at
once as the adaptive level allows (site_backup/in_flight.py)."""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Callable

from .in_flight import START, InFlightLevel


class FilePool:
    """Threads that copy files, highest priority first across every batch that uses them,
    ties in the order they were queued. Batches copying at the same time share one pool, so
    one batch alone can use all of it and many cannot exceed it.

    Light files (read whole, up to the block size) start while fewer than `level.level` are
    copying and their bytes (`weight`) fit in `light_budget`. Heavy ones (larger) are bounded
    apart, START at once, so they do not skew the level. All together stay within the cap.
    So memory stays what a fixed pool of START threads held."""

    def __init__(self, level: InFlightLevel, light_budget: int):
        self.level = level
        self._run: weakref.ref | None = None
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # ties keep submission order; never compares callables
        self._gate = threading.Condition()
        self._slots = self._heavy = self._held = 0
        self._light_budget = light_budget
        for i in range(level.cap + START):  # light files up to the level, and START heavy ones
            # Daemon: idle workers must not keep a finished process alive; every submitter
            # waits for its own futures, so no work is cut short.
            threading.Thread(target=self._work, name=f"copy_{i}", daemon=True).start()

    def level_for(self, run: object) -> InFlightLevel:
        """The level of `run` (its storage budget): a new run starts again from START, as
        it may reach other storage over another link."""
        with self._gate:
            if self._run is None or self._run() is not run:
                self.level = InFlightLevel(self.level.cap)
                self._run = weakref.ref(run)
            return self.level

    def submit(self, priority: int, fn: Callable, *args, weight: int = 0, heavy: bool = False) -> Future:
        """Queue `fn(*args)`; a higher `priority` starts sooner. `weight`: the bytes it holds
        in memory; `heavy`: it holds more than the block size (counted apart)."""
        future: Future = Future()
        self._queue.put((-priority, next(self._order), future, fn, args, weight, heavy))
        return future

    def _fits(self, weight: int, heavy: bool) -> bool:
        if heavy:
            return self._heavy < min(START, self.level.cap) and self._slots + self._heavy < self.level.cap
        return self._held == 0 or self._held + weight <= self._light_budget

    def _work(self) -> None:
        while True:
            # A slot first, then the next file: files start in priority order.
            with self._gate:
                self._gate.wait_for(lambda: self._slots < self.level.level
                                    and self._slots + self._heavy < self.level.cap)
                self._slots += 1
            _, _, future, fn, args, weight, heavy = self._queue.get()
            with self._gate:
                if heavy:  # bounded apart (START at once): it neither holds a slot nor skews the level
                    self._slots -= 1
                    self._gate.notify_all()
                self._gate.wait_for(lambda: self._fits(weight, heavy))
                self._heavy += heavy
                self._held += 0 if heavy else weight
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # handed to the submitter, as an executor does
                        future.set_exception(exc)
            finally:
                with self._gate:
                    self._heavy -= heavy
                    self._held -= 0 if heavy else weight
                    self._slots -= 0 if heavy else 1
                    self._gate.notify_all()


_pools_lock = threading.Lock()
_pools: dict[tuple[int, int], FilePool] = {}


def file_pool(cap: int, block_size: int) -> FilePool:
    """The process-wide pool of up to `cap` file-copying threads for files of `block_size` blocks."""
    with _pools_lock:
        key = (cap, block_size)
        if key not in _pools:
            _pools[key] = FilePool(InFlightLevel(cap), START * block_size)
        return _pools[key]
