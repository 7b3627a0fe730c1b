"""Stopping a run from the command line: SIGTERM and Ctrl-C wind it down, a second signal
or GRACE_SECONDS later the process leaves; the stop's line and exit code."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .retry import request_stop, stop_signal


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM (BaseException, like KeyboardInterrupt)."""


_signal_seen: list[int] = []
GRACE_SECONDS = 8.0  # then the process leaves whatever is still running: a stop takes under 10 s


def handle_stop_signals() -> dict:
    """SIGTERM and SIGINT stop the run: no request starts after them, waiting requests are
    woken, unfinished batches are not checkpointed. A second signal, or a run not wound
    down after GRACE_SECONDS, exits at once."""

    def on_signal(signum, frame):
        if _signal_seen:
            os._exit(128 + _signal_seen[0])
        _signal_seen.append(signum)
        request_stop(f"stopped by {signal.Signals(signum).name}", signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Stopped()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return previous


class _GraceTimer:
    """On a stop, however it came (our handler, or Prefect's turning SIGTERM into an
    exception in the flow), leave after GRACE_SECONDS if the run has not wound down: an SDK
    download waiting in a socket read cannot be woken."""

    def __init__(self):
        self.started = False

    def abort_all(self) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=_leave_after_grace, daemon=True).start()


grace_timer = _GraceTimer()


def restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _leave_after_grace() -> None:
    time.sleep(GRACE_SECONDS)
    signum = _stop_signal(None)
    sys.stderr.write(f"{_stop_line(signum)} (left requests still waiting after {GRACE_SECONDS:g} s)\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def _stop_line(signum: int) -> str:
    return (f"stopped by {signal.Signals(signum).name}: finished batches are checkpointed, unfinished ones are not; "
            f"run the same command again to resume")


def _stop_signal(exc) -> int:
    """The signal that stopped the run: ours, Prefect's (SIGTERM) or the stop's."""
    if _signal_seen:
        return _signal_seen[0]
    return getattr(exc, "signal", None) or (stop_signal[0] if stop_signal else signal.SIGINT)


def stopped_exit(exc) -> int:
    """The one line and exit code of a run that was stopped (130 for Ctrl-C, 143 for SIGTERM)."""
    signum = _stop_signal(exc)
    print(_stop_line(signum), file=sys.stderr)
    return 128 + signum
