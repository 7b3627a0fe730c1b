"""Where the suite's CPU goes: with TEST_CPU_LOG=FILE set, each test process appends one line
per test to FILE: the CPU seconds its whole process tree (the servers, Azurite and the command
lines it started) used from the test's setup to its teardown, the wall seconds, the test,
its start (Unix time) and its process (xdist's worker id), for the run's timeline. The
suite is CPU-bound on two cores, so this, not --durations, says what to cut."""

from __future__ import annotations

import os
import time

import pytest

TICKS = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of it and of the children it has waited for)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state, ppid, ..., utime stime cutime cstime are fields 11-14
        out[int(name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / TICKS)
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every live descendant (with what each has reaped)."""
    stats = _stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, ()))
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("TEST_CPU_LOG")
    if not path:
        yield
        return
    cpu, wall, started = tree_cpu(os.getpid()), time.monotonic(), time.time()
    yield
    cpu, wall = tree_cpu(os.getpid()) - cpu, time.monotonic() - wall
    with open(path, "a") as f:  # the start and the process, for the run's timeline
        f.write(f"{cpu:.2f}\t{wall:.2f}\t{item.nodeid}\t{started:.1f}\t{os.environ.get('PYTEST_XDIST_WORKER', '')}\n")
