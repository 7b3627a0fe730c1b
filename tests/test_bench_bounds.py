"""The benchmark's bounds (bench/run.py): the latency bound's and the machine CPU bound's
arithmetic, how far a run is from the largest bound, and the emulator's CPU read from one
thread, not the whole process."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bench.run import cpu_seconds, latency_bound, machine_bound, requests_in_flight, times_bound


def test_latency_bound_is_requests_over_in_flight_times_latency():
    assert latency_bound(5013, 16, 0.025) == pytest.approx(7.83, abs=0.01)
    assert latency_bound(4074, requests_in_flight("rclone"), 0.040) == pytest.approx(10.185)
    # The flow's level adapts: the bound takes the most files its summary says it had in flight.
    assert latency_bound(11, requests_in_flight("flow-entra", {"files_in_flight_peak": 16}), 0.025) == \
        pytest.approx(0.0171875)
    assert latency_bound(5013, requests_in_flight("flow", {"files_in_flight_peak": 64}), 0.040) == \
        pytest.approx(3.133125)
    assert latency_bound(None, 16, 0) == 0  # storage 0 ms away: no waiting, requests counted or not


def test_latency_bound_is_unknown_where_requests_in_flight_are_not_one_number():
    assert requests_in_flight("azcopy") is None and requests_in_flight("sdk") is None
    assert requests_in_flight("flow", {"files_in_flight_peak": 0}) == 16  # copied nothing: the start level
    assert latency_bound(15000, requests_in_flight("azcopy"), 0.025) is None
    assert latency_bound(None, 16, 0.025) is None  # requests not counted


def test_machine_bound_is_the_tools_and_storages_cpu_over_the_cores():
    assert machine_bound(5.3, 10.7, cores=2) == pytest.approx(8.0)
    assert machine_bound(5.3, 10.7) == pytest.approx(16.0 / os.cpu_count())
    assert machine_bound(None, 10.7, cores=2) is None and machine_bound(5.3, None, cores=2) is None


def test_times_bound_divides_wall_by_the_largest_known_bound():
    assert times_bound(15.0, 7.5, 10.0) == pytest.approx(1.5)  # the emulator's CPU is the larger
    assert times_bound(15.0, 12.0, 3.0) == pytest.approx(1.25)  # the latency bound is the larger
    assert times_bound(6.0, None, 4.0) == pytest.approx(1.5)  # AzCopy: the emulator's bound alone
    assert times_bound(10.0, 3.1, 6.0, 8.0) == pytest.approx(1.25)  # the machine's CPU is the largest
    assert times_bound(6.0, 0.0, 0.0) is None and times_bound(6.0, None, None) is None


def test_one_threads_cpu_leaves_out_what_other_threads_of_the_process_use():
    # The emulator bound reads Azurite's main thread: another thread's CPU must not count.
    pid = os.getpid()
    main_thread = f"/proc/{pid}/task/{threading.get_native_id()}/stat"
    assert threading.get_native_id() == pid  # pytest runs tests on the main thread: its id is the pid
    process_before, thread_before = cpu_seconds(f"/proc/{pid}/stat"), cpu_seconds(main_thread)

    def burn():
        started = time.thread_time()
        while time.thread_time() - started < 0.3:
            pass

    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    assert cpu_seconds(f"/proc/{pid}/stat") - process_before >= 0.28
    assert cpu_seconds(main_thread) - thread_before < 0.1
