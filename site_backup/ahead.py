"""Answers from storage started before the run asks for them, in this process.

The command line starts its storage check and the destination's listing while Prefect
imports (site_backup/cli_head_start.py). The run's tasks take them by what they are of (the
destination, the policy, the account), each once, and ask storage themselves when there is
none. The command line forgets what no task took when its run ends.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_started: dict[Hashable, Future] = {}
_lock = threading.Lock()


def start(key: tuple, work: Callable[[], Any]) -> Future:
    """Run `work` in a thread now; its answer, or its exception, is kept under `key`."""
    future: Future = Future()
    with _lock:
        _started[key] = future

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=f"ahead-{key[0]}", daemon=True).start()
    return future


def started(key: tuple) -> Future | None:
    """What was started under `key`, left for a task to take."""
    with _lock:
        return _started.get(key)


def take(key: tuple) -> Future | None:
    """What was started under `key`, taken: a second call gets None."""
    with _lock:
        return _started.pop(key, None)


def answered(future: Future | None, ask: Callable[[], T], lasting: tuple[type[BaseException], ...] = ()) -> T:
    """`future`'s answer (one started ahead, taken), else `ask()` now. One that failed is
    asked again, unless it failed with one of `lasting` (the same mistake would come back)."""
    if future is not None:
        try:
            return future.result()
        except lasting:
            raise
        except Exception:  # storage may answer now; a lasting problem fails `ask` too
            pass
    return ask()


def forget() -> None:
    """Drop everything no task took."""
    with _lock:
        _started.clear()
