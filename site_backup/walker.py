"""The walk in a process of its own.

A backup's interpreter runs the copies and Prefect's bookkeeping under one lock (the GIL);
walking a large tree there (a system call per file, and the Python around it) takes turns
with them. A child process walks on another core instead and hands each batch over a pipe:
the same batches, in the same order, as `stream_batches` in this process (so the same
checkpoint keys), with the same problems recorded in the listing. A full pipe stops the
child, so it never runs more than a few batches ahead.

    python -m site_backup.walker      (the child: a request on stdin, messages on stdout)
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from .files import Batch, FileListing, stream_batches


class WalkFailed(RuntimeError):
    """The walking process ended without finishing the walk."""


def walk_elsewhere(listing: FileListing, **options) -> Iterator[Batch]:
    """`stream_batches(listing, **options)`, walked by a child process."""
    child = subprocess.Popen([sys.executable, "-m", "site_backup.walker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=_child_environment())
    try:
        try:
            pickle.dump((listing.root, options), child.stdin)
            child.stdin.close()
        except BrokenPipeError:  # it ended at once: reading says how
            pass
        listing.walking = True
        while True:
            message = _receive(child)
            kind, skipped, failed, listing.excluded = message[:4]
            listing.skipped.extend(skipped)
            listing.failed.extend(failed)
            if kind == "end":
                break
            batch = Batch(message[4])
            listing.file_count += len(batch)
            listing.byte_count += batch.bytes
            listing.batch_count += 1
            yield batch
        listing.walking = False
        child.wait(timeout=30)  # it has sent everything, and ends
    finally:
        if child.poll() is None:  # the run stopped asking (or failed): the walk is not needed
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            try:
                pipe.close()
            except OSError:  # a request the child never read
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


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle; it ends this
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the parent stopped reading: it no longer needs the walk
        os._exit(0)
