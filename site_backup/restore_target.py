"""The target folder of a restore: made and identified before anything is written, and held
by one restore at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from typing import Iterator

from .errors import ConfigurationError


def prepare_target(target: str) -> tuple[str, str]:
    """Create the target folder if needed; return its real path and what identifies it
    (the real path and the folder's device and inode, so a folder deleted and made again
    is another target). Nothing is written inside it: a restore's progress is kept in
    the checkpoint store, never in the tree it restores."""
    path = os.path.abspath(os.path.expanduser(target))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigurationError(f"target {target!r} exists and is not a folder: give a folder to restore into")
    try:
        os.makedirs(path, exist_ok=True)
        real = os.path.realpath(path)
        st = os.stat(real)
        if not os.access(real, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write to the target {target!r} ({exc.strerror or exc}): give a folder you may write to"
        ) from None
    return real, f"{real}\0{st.st_dev}\0{st.st_ino}"


@contextlib.contextmanager
def exclusive_target(target: str) -> Iterator[str]:
    """Hold the target folder for one restore: an exclusive flock on the folder itself,
    which the kernel releases when the process ends however it ends (no lock file, so
    nothing stray in the tree and nothing to clean up after a kill). A second restore into
    the same folder (by any path to it) is refused with ConfigurationError. Yields '' or,
    on a file system without flock (some network and FUSE ones), a warning that the
    restore goes on unguarded."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            warning = ""
        except BlockingIOError:
            raise ConfigurationError(
                f"another restore is writing into {target} now: wait for it to end (or stop it), then run this one "
                f"again, or restore into another folder; two restores into one folder would leave a tree that "
                f"matches neither") from None
        except OSError as exc:
            warning = (f"cannot lock the target {target} ({exc.strerror or exc}): this file system does not "
                       f"support flock, so a second restore into it at the same time would not be refused")
        yield warning
    finally:
        os.close(fd)


def new_restore_id() -> str:
    """The id that keys one restore's checkpoints, from its start until it completes."""
    return uuid.uuid4().hex
