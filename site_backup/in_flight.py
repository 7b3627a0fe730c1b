"""How many files a process copies at once: a level that adapts to the link to storage.

Far from storage the bound is requests in flight (files ÷ in flight × latency), near it the
CPU (ours or the service's). The level starts where a fixed pool used to sit and doubles
while each rise brings more files per second; a rise that brings nothing is undone and the
level settles. A retried request (503 ServerBusy, 429, a timeout, a dropped connection) halves
it: storage asked for less. While settled, the level tries a quarter more now and then and
keeps it only when it pays, so it recovers after a halving. The user's --files-in-flight is
the cap; halvings stop at FLOOR."""

from __future__ import annotations

import threading
import time
from typing import Callable

FILES_IN_FLIGHT = 64  # the default cap (--files-in-flight): as many as a store keeps connections open
FLOOR = 4  # a halving goes no lower (or the cap): faults at random, not from load, must not crawl
START = 16  # the level a run starts at (the fixed pool's size before the level adapted)
# A doubling must bring this much more throughput to be kept: near storage one brings a few
# percent, within the noise of one window; far from it, far more.
RISE = 1.25
PROBE_RISE = 1.10  # a probe (a quarter more) while settled must bring this much
PROBE_EVERY = 8  # windows between two probes while settled
MIN_WINDOW_SECONDS = 0.2  # a window is at least this long and two levels' worth of files


class InFlightLevel:
    """The adaptive level (thread-safe). `finished()` is told of every file copied."""

    def __init__(self, cap: int, start: int = START, clock: Callable[[], float] = time.monotonic):
        self.cap = max(1, cap)
        self.level = min(self.cap, max(1, start))
        self.peak = self.level
        self._clock = clock
        self._lock = threading.Lock()
        self._growing = self.level < self.cap  # doubling until a doubling brings nothing
        self._kept: tuple[int, float] | None = None  # (level, files per second) last kept
        self._windows_settled = 0
        self._window_started = clock()
        self._window_files = 0
        self._window_troubled = False

    def finished(self, troubled: bool = False) -> None:
        """A file was copied; `troubled`: storage had a request of it retried."""
        with self._lock:
            self._window_files += 1
            self._window_troubled |= troubled
            now = self._clock()
            elapsed = now - self._window_started
            # One decision per window, so one burst of 503s halves the level once.
            enough = self.level if self._window_troubled else 2 * self.level
            if self._window_files < enough or elapsed < MIN_WINDOW_SECONDS:
                return
            self._decide(self._window_files / elapsed, self._window_troubled)
            self._window_started, self._window_files, self._window_troubled = now, 0, False

    def _decide(self, rate: float, troubled: bool) -> None:
        if troubled:  # multiplicative decrease; settle there
            self.level = max(min(FLOOR, self.level), self.level // 2)
            self._kept, self._growing, self._windows_settled = None, False, 0
            return
        kept = self._kept
        if kept is None or self.level == kept[0]:  # a window at a kept level: its rate is the reference
            self._kept = (self.level, rate)
            if self._growing:
                self._set(self.level * 2)
            else:
                self._windows_settled += 1
                if self._windows_settled >= PROBE_EVERY and self.level < self.cap:
                    self._windows_settled = 0
                    self._set(self.level + max(1, self.level // 4))
            return
        # A window at a level above the kept one: keep it only if it paid.
        needed = RISE if self._growing else PROBE_RISE
        if rate >= kept[1] * needed:
            self._kept = (self.level, rate)
            if self._growing:
                self._set(self.level * 2)
        else:
            self.level, self._growing = kept[0], False

    def _set(self, level: int) -> None:
        self.level = min(self.cap, level)
        self.peak = max(self.peak, self.level)
        if self.level == self.cap:
            self._growing = False
