"""The process-wide pool of threads that copy files, highest priority first, as many at
once as the adaptive level allows (site_backup/in_flight.py)."""

from __future__ import annotations

import heapq
import itertools
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Callable

from .in_flight import START, InFlightLevel


class FilePool:
    """Threads that copy files across every batch that uses them: batches copying at the
    same time share one pool, so one batch alone can use all of it and many cannot exceed it.

    Heavy files (above the block size) start first, largest first, at most START at once, so
    they neither skew the level nor wait behind small files. Light ones (read whole) start in
    the order queued while fewer than `level.level` are copying and their bytes fit in
    `light_budget`. All together stay within the cap. So memory stays what a fixed pool of
    START threads held. A file is taken only when it may start: no thread holds a place
    while it waits."""

    def __init__(self, level: InFlightLevel, light_budget: int):
        self.level = level
        self._run: weakref.ref | None = None
        self._gate = threading.Condition()
        self._order = itertools.count()  # ties keep submission order; never compares callables
        self._heavy_queue: list = []  # heap of (-size, order, future, fn, args)
        self._light_queue: deque = deque()  # (weight, future, fn, args), in the order queued
        self._light = self._heavy = self._held = 0
        self._light_budget = light_budget
        for i in range(level.cap):
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
        """Queue `fn(*args)`. `heavy`: it holds more than the block size in memory (a
        higher `priority` starts sooner among those); else `weight`, its bytes."""
        future: Future = Future()
        with self._gate:
            if heavy:
                heapq.heappush(self._heavy_queue, (-priority, next(self._order), future, fn, args))
            else:
                self._light_queue.append((weight, future, fn, args))
            self._gate.notify()
        return future

    def queued(self) -> int:
        """Files waiting to start."""
        with self._gate:
            return len(self._heavy_queue) + len(self._light_queue)

    def _next(self):
        """The next file that may start now, taken off its queue (under the gate), or None."""
        cap = self.level.cap
        if self._light + self._heavy >= cap:
            return None
        if self._heavy_queue and self._heavy < min(START, cap):
            _, _, future, fn, args = heapq.heappop(self._heavy_queue)
            self._heavy += 1
            return True, 0, future, fn, args
        if self._light_queue and self._light < self.level.level:
            weight = self._light_queue[0][0]
            if self._held == 0 or self._held + weight <= self._light_budget:
                weight, future, fn, args = self._light_queue.popleft()
                self._light += 1
                self._held += weight
                return False, weight, future, fn, args
        return None

    def _startable(self) -> int:
        """At most how many queued files may start now (under the gate): the slot just
        freed, and more if the level rose."""
        cap = self.level.cap
        heavy = min(len(self._heavy_queue), max(0, min(START, cap) - self._heavy))
        light = min(len(self._light_queue), max(0, self.level.level - self._light))
        return min(cap - self._light - self._heavy, heavy + light)

    def _work(self) -> None:
        while True:
            with self._gate:
                taken = self._gate.wait_for(self._next)
            heavy, weight, future, fn, args = taken
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # handed to the submitter, as an executor does
                        future.set_exception(exc)
            finally:
                with self._gate:
                    if heavy:
                        self._heavy -= 1
                    else:
                        self._light -= 1
                        self._held -= weight
                    # As many as may start now, not every idle thread at each file's end.
                    self._gate.notify(self._startable())


_pools_lock = threading.Lock()
_pools: dict[tuple[int, int], FilePool] = {}


def file_pool(cap: int, block_size: int) -> FilePool:
    """The process-wide pool of up to `cap` file-copying threads for files of `block_size` blocks."""
    with _pools_lock:
        key = (cap, block_size)
        if key not in _pools:
            _pools[key] = FilePool(InFlightLevel(cap), START * block_size)
        return _pools[key]
