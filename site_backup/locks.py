"""Locks that keep a prune and the backups whose history it could touch apart.

A lock is an empty blob in the history container, `locks/<quoted prefix>/<kind>-<id>`,
held by a blob lease of LEASE_SECONDS that its holder renews every RENEW_SECONDS; its
metadata names the run, the host and the process. Every backup run and every prune takes
one of its own, so backups never exclude each other. Two destinations overlap when one's
prefix is the other's, or an ancestor of it (the empty prefix overlaps every prefix):
only then can one's history need the other's blobs.

The rule, checked by each side after it has written its own lock (so when both start at
once, at least one sees the other, and neither acts before its check):
- a prune refuses while any other overlapping lock is leased (a backup or a prune);
- a backup waits up to PRUNE_WAIT_SECONDS while an overlapping prune's lock is leased,
  then refuses, before it snapshots anything.
A holder killed without releasing its lease stops renewing it: Azure ends the lease
LEASE_SECONDS later at most, and the next prune removes the blob.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, unquote

from .errors import ConfigurationError, describe, error_code
from .retry import STOP, LockBudget, stopped_error

LEASE_SECONDS = 60  # Azure allows 15-60 s, or infinite (which a killed run would never give back)
RENEW_SECONDS = 20
PRUNE_WAIT_SECONDS = 60.0  # how long a backup waits for an overlapping prune before it refuses
POLL_SECONDS = 1.0
LOCKS = "locks/"


class HeldLock(ConfigurationError):
    """Another run holds a lock this one must not pass; the message says who and what to do
    (exit 2, like bad input: nothing was done)."""


def locks_folder(prefix: str) -> str:
    return f"{LOCKS}{quote('/' + prefix, safe='')}/"


def overlaps(a: str, b: str) -> bool:
    """Whether destinations with prefixes `a` and `b` can name the same blob: equal, or one
    an ancestor folder of the other ('' is every prefix's ancestor; 'x' is not 'xy''s)."""
    return a == b or not a or not b or b.startswith(a + "/") or a.startswith(b + "/")


@dataclass(frozen=True)
class LockInfo:
    """One lock blob as listed."""

    name: str
    prefix: str
    kind: str  # "backup" or "prune"
    run_id: str
    leased: bool
    host: str = ""
    pid: int = 0

    @classmethod
    def parse(cls, name: str, leased: bool, metadata: dict) -> "LockInfo | None":
        folder, _, base = name[len(LOCKS):].partition("/")
        kind, _, rest = base.partition("-")
        if not folder.startswith("%2F") or kind not in ("backup", "prune"):
            return None  # not one of ours
        run_id = metadata.get("runid") or rest.rsplit(".", 1)[0]
        try:
            pid = int(metadata.get("pid") or 0)
        except ValueError:
            pid = 0
        return cls(name, unquote(folder)[1:], kind, run_id, leased, metadata.get("host", ""), pid)

    def describe(self) -> str:
        """Who holds it, and whether that holder is still alive, as far as can be told."""
        what = f"{'a backup' if self.kind == 'backup' else 'a prune'} of prefix {self.prefix or '(none)'!r}"
        who = f"run {self.run_id}" + (f" on {self.host}, pid {self.pid}" if self.host else "")
        if self.host and self.host == socket.gethostname() and self.pid and not _alive(self.pid):
            return (f"{what} ({who}) has ended without releasing its lock (its process is gone: killed), "
                    f"and its lease ends within {LEASE_SECONDS} s")
        return f"{what} ({who}) is running (it renewed its lease within the last {LEASE_SECONDS} s)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_locks(store) -> list[LockInfo]:
    """Every lock of the container (all destinations)."""
    found = []
    try:
        for name, state, metadata in store.list_leases(LOCKS):
            info = LockInfo.parse(name, state == "leased", metadata)
            if info is not None:
                found.append(info)
    except Exception as exc:
        if error_code(exc) != "ContainerNotFound":
            raise
    return found


class Lease:
    """A lease on one lock blob, renewed in a background thread until released. Each of its
    requests gets a budget of its own (LockBudget): a stopped or failed run still releases
    its lock, and a failed renewal does not end later ones."""

    def __init__(self, open_store: Callable[[LockBudget], object], name: str, run_id: str,
                 warn: Callable[[str], None] | None = None):
        self.open_store, self.name, self.run_id = open_store, name, run_id
        self.lease_id = str(uuid.uuid4())
        self.warn = warn or (lambda message: None)
        self.lost = ""  # why the lease may have been lost, once a renewal failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store(self):
        return self.open_store(LockBudget())

    def acquire(self) -> "Lease":
        """Write the lock blob (creating the container on first use) and lease it."""
        store = self.store
        metadata = {"runid": self.run_id, "host": socket.gethostname(), "pid": str(os.getpid())}
        for attempt in (0, 1):
            try:
                store.put(self.name, b"", md5=hashlib.md5(b"").digest(), content_type="text/plain",
                          metadata=metadata)
                break
            except Exception as exc:
                if error_code(exc) != "ContainerNotFound" or attempt == 1:
                    raise
                store.create_container()  # the first use of this container's history
        store.lease(self.name, "acquire", self.lease_id, LEASE_SECONDS)
        self._thread = threading.Thread(target=self._renew, name="lock-renew", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.store.lease(self.name, "renew", self.lease_id)
                self.lost = ""
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.lost = describe(exc)
                self.warn(f"the lock {self.name} could not be renewed ({self.lost}); tried again in "
                          f"{RENEW_SECONDS} s. If its lease ends meanwhile ({LEASE_SECONDS} s after the last "
                          f"renewal), a prune may run alongside this run and delete what it keeps")

    def release(self, patience: float | None = None) -> Exception | None:
        """Stop renewing and delete the lock blob; the error when that was refused (its lease
        then ends by itself within LEASE_SECONDS). With `patience`, wait no longer than that
        for the delete: a run that was stopped, or whose storage stopped answering, must not
        wait out a silent endpoint to give back a lease that ends by itself."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        outcome: list[Exception | None] = []

        def delete() -> None:
            try:
                self.store.delete(self.name, lease_id=self.lease_id)
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)

        if patience is None:
            delete()
        else:
            worker = threading.Thread(target=delete, name="lock-release", daemon=True)
            worker.start()
            worker.join(patience)
        if not outcome:
            return TimeoutError(f"storage did not answer within {patience:g} s")
        return outcome[0]


def take_lock(open_store, prefix: str, kind: str, run_id: str, warn=None) -> Lease:
    """A new lock of this run (one per attempt: a flow run retried after a crash keeps its
    run id, and must not wait for the lease its crashed attempt left)."""
    name = f"{locks_folder(prefix)}{kind}-{run_id}.{uuid.uuid4().hex[:8]}"
    return Lease(open_store, name, run_id, warn).acquire()


def conflicts(locks: list[LockInfo], mine: Lease, prefix: str, kinds: tuple[str, ...]) -> list[LockInfo]:
    """The leased locks of other runs, of these kinds, whose prefix overlaps `prefix`."""
    return [k for k in locks if k.leased and k.name != mine.name and k.kind in kinds and overlaps(k.prefix, prefix)]


def lock_for_prune(open_store, prefix: str, run_id: str) -> tuple[Lease, list[LockInfo]]:
    """The prune's own lock, and the locks its holders left (leases ended: killed runs) of
    overlapping destinations. HeldLock, with the prune's lock released, while any other
    backup or prune of an overlapping prefix holds one."""
    lock = take_lock(open_store, prefix, "prune", run_id)
    try:
        found = list_locks(lock.store)
        held = conflicts(found, lock, prefix, ("backup", "prune"))
        if held:
            raise HeldLock(f"{held[0].describe()}" + (f", and {len(held) - 1} more" if len(held) > 1 else "")
                           + f": prune when it has finished (the lease of a killed holder ends within "
                           f"{LEASE_SECONDS} s)")
    except BaseException:
        lock.release()
        raise
    stale = [k for k in found if not k.leased and overlaps(k.prefix, prefix)]
    return lock, stale


def lock_for_backup(open_store, prefix: str, run_id: str, warn=None, wait: float | None = None) -> Lease:
    """The backup's own lock, taken before it snapshots anything. While a prune of an
    overlapping prefix holds its lock, waits for it up to `wait` seconds (PRUNE_WAIT_SECONDS),
    then refuses (HeldLock), its own lock released."""
    wait = PRUNE_WAIT_SECONDS if wait is None else wait
    lock = take_lock(open_store, prefix, "backup", run_id, warn)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            held = conflicts(list_locks(lock.store), lock, prefix, ("prune",))
            if not held:
                return lock
            if time.monotonic() >= deadline:
                raise HeldLock(f"{held[0].describe()}: this backup waited {wait:g} s for it and did nothing; "
                               "run it again when the prune has finished")
            if not told and warn is not None:
                warn(f"waiting up to {wait:g} s for {held[0].describe()}")
                told = True
            if STOP.wait(POLL_SECONDS):
                raise stopped_error()
    except BaseException:
        lock.release()
        raise
