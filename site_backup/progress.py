"""Live counters of finished files, shared by the copy threads and whoever displays them."""

from __future__ import annotations

import threading
import time

from .units import MiB


class Progress:
    """Thread-safe running totals for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self, files_expected: int = 0, bytes_expected: int = 0) -> None:
        with self._lock:
            self.files_expected, self.bytes_expected = files_expected, bytes_expected
            self.counting = False
            self.files_done = self.bytes_done = self.bytes_uploaded = 0
            self.started = time.monotonic()

    def expect(self, files_expected: int, bytes_expected: int, counting: bool = False) -> None:
        """New totals from a walk that goes on while files are copied (counting) or has ended."""
        with self._lock:
            self.files_expected, self.bytes_expected, self.counting = files_expected, bytes_expected, counting

    def add(self, outcome) -> None:
        with self._lock:
            self.files_done += 1
            self.bytes_done += outcome.size
            self.bytes_uploaded += outcome.bytes_uploaded

    def __reduce__(self):
        # Pickled (the copy task shipped to a Dask worker), it stands for that process's own.
        return (_this_process, ())

    def line(self) -> str:
        """One line for a terminal: files, bytes and throughput so far."""
        with self._lock:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            mib = self.bytes_uploaded / MiB
            more = "+" if self.counting else ""  # the walk goes on: more may come
            return (
                f"{self.files_done}/{self.files_expected}{more} files, "
                f"{self.bytes_done / MiB:.1f}/{self.bytes_expected / MiB:.1f}{more} MiB checked, "
                f"{mib:.1f} MiB sent ({mib / elapsed:.1f} MiB/s, {self.files_done / elapsed:.0f} files/s)"
            )


# One per process: the copy tasks of a run share it, the command line reads it.
progress = Progress()


def _this_process() -> Progress:
    return progress
