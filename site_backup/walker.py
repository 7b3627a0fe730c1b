"""The walk in a process of its own.

A backup's interpreter runs the copies and Prefect's bookkeeping under one lock (the GIL);
walking a large tree there (a system call per file, and the Python around it) takes turns
with them. A child process walks on another core instead and hands each batch over a pipe:
the same batches, in the same order, as `stream_batches` in this process (so the same
checkpoint keys), with the same problems recorded in the listing. A full pipe stops the
child, so it never runs more than a pipe (PIPE_BYTES of pickled batches) ahead.

    python -m site_backup.walker      (the child: a request on stdin, messages on stdout)
"""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from .files import Batch, FileListing, stream_batches


PIPE_BYTES = 1 << 20  # how far (pickled) the child may walk ahead of the flow


class WalkFailed(RuntimeError):
    """The walking process ended without finishing the walk."""


class ChildWalk:
    """`stream_batches(listing, **options)`, walked by a child process that starts at once
    (so it walks while the flow prepares storage). Iterate for the batches; `close()` ends
    the child whenever the batches are no longer wanted."""

    def __init__(self, listing: FileListing, **options):
        self.listing = listing
        self.child = subprocess.Popen([sys.executable, "-m", "site_backup.walker", str(os.getpid())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_environment())
        _widen(self.child.stdout)
        try:
            pickle.dump((listing.root, options), self.child.stdin)
            self.child.stdin.close()
        except BrokenPipeError:  # it ended at once: reading says how
            pass
        listing.walking = True

    def __iter__(self) -> Iterator[Batch]:
        listing = self.listing
        try:
            while True:
                message = _receive(self.child)
                kind, skipped, failed, listing.excluded = message[:4]
                listing.skipped.extend(skipped)
                listing.failed.extend(failed)
                if kind == "end":
                    break
                batch = Batch(message[4])
                listing.count(batch)
                yield batch
            listing.walking = False
            self.child.wait(timeout=30)  # it has sent everything, and ends
        finally:
            self.close()

    def close(self) -> None:
        """End the child if it still runs (the batches are not wanted), and wait for it."""
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        for pipe in (self.child.stdin, self.child.stdout):
            try:
                pipe.close()
            except OSError:  # a request the child never read
                pass


def _widen(pipe) -> None:
    # The child walks while this process is busy copying only as far as the pipe holds: the
    # default 64 KiB is a few batches; Linux lets a pipe hold up to 1 MiB unprivileged.
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):  # not Linux, or a lower limit: the default then
        pass


def _receive(child: subprocess.Popen) -> tuple:
    try:
        message = pickle.load(child.stdout)
    except (EOFError, pickle.UnpicklingError):
        code = child.wait()
        raise WalkFailed(f"the process walking the tree ended unexpectedly (exit code {code}): "
                         f"see its error above; run the backup again") from None
    if message[0] == "error":
        raise message[1]
    return message


def _child_environment() -> dict[str, str]:
    # The child imports this package as the parent did, installed or not.
    home = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": home + (os.pathsep + path if path else "")}


def _serve(source, sink) -> None:
    """Walk as the request on `source` says; write each message to `sink` as it is ready."""
    root, options = pickle.load(source)
    listing = FileListing(root=root)
    told = [0, 0]  # problems already sent: (skipped, failed)

    def send(kind: str, *rest) -> None:
        news = listing.skipped[told[0]:], listing.failed[told[1]:]
        told[:] = len(listing.skipped), len(listing.failed)
        pickle.dump((kind, *news, listing.excluded, *rest), sink, protocol=pickle.HIGHEST_PROTOCOL)
        sink.flush()

    try:
        for batch in stream_batches(listing, **options):
            send("batch", batch.items)
    except Exception as exc:  # the parent raises it as if it had walked itself
        try:
            pickle.dumps(exc)
        except Exception:
            exc = WalkFailed(f"{type(exc).__name__}: {exc}")
        pickle.dump(("error", exc), sink)
        sink.flush()
        return
    send("end")


def _end_with(parent: int) -> None:
    """Be killed when `parent` dies, even by SIGKILL: a walk stalled in a folder (a hung
    network mount) would not notice the closed pipe until its next batch. Linux only."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before that took effect
        os._exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle; it ends this
    if len(sys.argv) > 1:
        _end_with(int(sys.argv[1]))
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the parent stopped reading: it no longer needs the walk
        os._exit(0)
