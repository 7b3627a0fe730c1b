"""The adaptive level of files in flight (site_backup/in_flight.py) against a model link, and
the pool that holds copies to it (site_backup/file_pool.py)."""

from __future__ import annotations

import threading
import time

from site_backup.file_pool import FilePool
from site_backup.in_flight import FLOOR, PROBE_EVERY, START, InFlightLevel


class Link:
    """A model of storage: files per second grow with the files in flight up to `capacity`
    (the latency bound), then stay flat (the service's CPU bound). Time is simulated."""

    def __init__(self, capacity: int, per_file_seconds: float = 0.04):
        self.capacity, self.per_file = capacity, per_file_seconds
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def run(self, level: InFlightLevel, files: int, troubled=lambda n: False) -> list[int]:
        """Copy `files` files one after another at the rate the link allows; the levels seen."""
        seen = []
        for n in range(files):
            rate = min(level.level, self.capacity) / self.per_file
            self.now += 1 / rate
            level.finished(troubled=troubled(n))
            seen.append(level.level)
        return seen


def test_far_from_storage_the_level_doubles_to_where_a_doubling_brings_nothing_and_settles():
    link = Link(capacity=48)
    level = InFlightLevel(cap=256, clock=link.clock)
    assert level.level == START == 16
    seen = link.run(level, 5000)
    assert sorted(set(seen)) == [16, 32, 64, 80, 128], sorted(set(seen))  # 80: a probe from 64, undone
    assert level.peak == 128  # 128 brought nothing over 64; 64 brought 48 over 32
    settled = seen[seen.index(128):]
    assert set(settled) == {64, 80, 128} and settled.count(64) >= 0.75 * len(settled)


def test_near_storage_a_doubling_that_brings_nothing_is_undone_at_once():
    link = Link(capacity=16)  # the service's CPU is the bound at the start level already
    level = InFlightLevel(cap=64, clock=link.clock)
    seen = link.run(level, 3000)
    assert level.peak == 32 and seen.count(32) <= 100  # one window (0.2 s, 80 files) at 32, then back
    # While settled it probes a quarter more now and then, and comes back: no probe pays.
    assert set(seen) == {16, 20, 32} and seen.count(16) >= 0.8 * len(seen)


def test_the_cap_is_never_passed_and_a_cap_below_the_start_is_the_level():
    link = Link(capacity=1000)
    level = InFlightLevel(cap=48, clock=link.clock)
    assert max(link.run(level, 5000)) == 48 == level.level
    fixed = InFlightLevel(cap=4, clock=link.clock)
    assert set(link.run(fixed, 500)) == {4}


def test_a_retried_request_halves_the_level_once_per_window_and_probes_win_it_back():
    link = Link(capacity=200)
    level = InFlightLevel(cap=64, clock=link.clock)
    link.run(level, 2000)
    assert level.level == 64
    # One burst of 503s, reported by every file for a while: one halving, not one per file.
    seen = link.run(level, 400, troubled=lambda n: n < 50)
    assert min(seen) == 32 and level.level == 32
    # Storage answers again: the level probes a quarter more every PROBE_EVERY windows and keeps what pays.
    seen = link.run(level, 20 * PROBE_EVERY * 2 * 64)
    # (From 62 the cap allows 64 only, 3% more: not enough to keep.)
    assert {32, 40, 50, 62} <= set(seen) and seen[-1] >= 62, sorted(set(seen))


def test_storage_that_keeps_failing_brings_the_level_down_to_the_floor():
    link = Link(capacity=200)
    level = InFlightLevel(cap=64, clock=link.clock)
    seen = link.run(level, 500, troubled=lambda n: True)
    assert level.level == FLOOR == 4 and seen[:3] == [16, 16, 16] and min(seen) == 4
    low = InFlightLevel(cap=2, clock=link.clock)
    assert set(link.run(low, 100, troubled=lambda n: True)) == {2}


def hold(pool: FilePool, count: int):
    """Submit `count` copies that wait for their own release; returns (started, releases)."""
    started, releases = [], []
    lock = threading.Lock()
    for i in range(count):
        release = threading.Event()
        releases.append(release)

        def copy(i=i, release=release):
            with lock:
                started.append(i)
            release.wait(10)

        pool.submit(0, copy)
    return started, releases


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_the_pool_starts_files_up_to_the_level_in_the_order_queued_and_more_once_it_rises():
    level = InFlightLevel(cap=8, start=2)
    pool = FilePool(level, light_budget=1000)
    started, releases = hold(pool, 6)
    wait_for(lambda: len(started) == 2, "two files did not start")
    assert started == [0, 1] and pool.queued() == 4  # a file is taken only when it may start
    level.level = 4  # as a window that paid would raise it
    releases[0].set()  # a copy ends: the pool looks at the level again
    wait_for(lambda: len(started) == 5, "the pool did not start three more")
    assert started == [0, 1, 2, 3, 4]
    for release in releases:
        release.set()


def test_a_finished_file_wakes_only_the_threads_that_may_start_one():
    # Waking every idle thread at each file's end cost more CPU than copying small files.
    class Counting(FilePool):
        looks = 0

        def _next(self):  # called under the gate, by each thread that wakes
            Counting.looks += 1
            return super()._next()

    pool = Counting(InFlightLevel(cap=64, start=4), light_budget=1000)
    files = 200
    # Each file waits a millisecond without the GIL, as a request does: the woken threads run.
    for future in [pool.submit(0, time.sleep, 0.001, weight=1) for _ in range(files)]:
        future.result(timeout=10)
    assert Counting.looks < 64 + 5 * files, Counting.looks  # waking every idle thread: about 20 a file


def test_the_pool_holds_no_more_bytes_than_a_fixed_pool_of_the_start_size_did():
    level = InFlightLevel(cap=8, start=8)
    pool = FilePool(level, light_budget=100)
    started, releases = [], []
    for i in range(4):
        release = threading.Event()
        releases.append(release)
        pool.submit(0, lambda i=i, release=release: (started.append(i), release.wait(10)), weight=60)
    wait_for(lambda: started, "the first file did not start")
    assert started == [0] and pool.queued() == 3  # a second 60 would hold 120 > 100
    releases[0].set()
    wait_for(lambda: len(started) == 2, "the second file did not start after the first")
    for release in releases:
        release.set()


def test_a_large_file_queued_last_starts_within_the_cap_and_large_files_go_first():
    for cap in (2, 1):
        pool = FilePool(InFlightLevel(cap=cap), light_budget=1000)
        started, small = [], threading.Event()
        pool.submit(0, lambda: (started.append("small"), small.wait(10)), weight=10)
        wait_for(lambda: started == ["small"], "the small file did not start")
        large = pool.submit(500, lambda: started.append("large"), heavy=True)
        if cap == 1:  # the cap counts every file: the large one waits for the small one
            assert pool.queued() == 1
            small.set()
        large.result(timeout=10)  # it starts: nothing holds a place without a file
        small.set()
        assert started == ["small", "large"]
    # Queued together, large files start first, largest first, then small ones in order.
    pool = FilePool(InFlightLevel(cap=1), light_budget=1000)
    order, gate = [], threading.Event()
    blocker = pool.submit(0, gate.wait)
    futures = [pool.submit(0, order.append, "a", weight=1), pool.submit(9, order.append, "big", heavy=True),
               pool.submit(0, order.append, "b", weight=1), pool.submit(20, order.append, "bigger", heavy=True)]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert order == ["bigger", "big", "a", "b"]
