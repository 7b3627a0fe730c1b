"""When a file may still change without its times moving: writes through a memory map
within the kernel's writeback window."""

from __future__ import annotations

import os
import time
from functools import cache


# Writes through a shared memory map move the mtime (and ctime) only when they dirty a clean
# page: a page written again before the kernel writes it back takes the new bytes silently.
# Writeback cleans a page at most dirty_expire + dirty_writeback after it was dirtied, so a
# file whose times are older than that (plus a margin for writeback running late) has no
# page that can change unseen: any write faults and moves the times the stat check compares.
_WRITEBACK_MARGIN_NS = 30 * 10**9


@cache
def writeback_window_ns() -> int | None:
    """How long after its last recorded change a file may still change without its times
    moving; None when periodic writeback is off (then that is any time)."""
    try:
        with open("/proc/sys/vm/dirty_expire_centisecs") as f:
            expire = int(f.read())
        with open("/proc/sys/vm/dirty_writeback_centisecs") as f:
            interval = int(f.read())
    except (OSError, ValueError):
        expire, interval = 3000, 500  # Linux's defaults
    if interval <= 0:
        return None
    return (max(expire, 0) + interval) * 10**7 + _WRITEBACK_MARGIN_NS


def may_still_be_written(st: os.stat_result, now_ns: int | None = None) -> bool:
    """True when the file changed within the writeback window, so writes through a memory
    map may go on without moving its times: such a file is read twice before its blob is
    written. A future ctime counts as recent (ctime cannot be set; the clock moved)."""
    window = writeback_window_ns()
    if window is None:
        return True
    now = time.time_ns() if now_ns is None else now_ns
    return st.st_ctime_ns >= now - window or abs(now - st.st_mtime_ns) <= window
