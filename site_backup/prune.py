"""Retention: which runs a policy keeps (restic's --keep-* rules), deleting the manifests of
the others and the snapshots no kept run needs, and the locks that keep a prune from
running while a backup of the same destination does.

Locks are blobs in the history container, under `locks/<quoted prefix>/`, each held by a
blob lease of LEASE_SECONDS that its holder renews every RENEW_SECONDS. Each backup run
holds its own (`backup-<run id>`), so overlapping backups do not exclude each other; a
prune refuses to start while any of them is leased, and holds `prune` itself, so two
prunes do not run at once. A run killed without releasing its lease stops renewing it:
Azure ends the lease LEASE_SECONDS later at most, and the next prune removes the blob.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from .errors import ConfigurationError, error_code
from .copy import blob_name
from .history import RunRecord, iso, list_runs, read_manifest

LEASE_SECONDS = 60  # Azure allows 15-60 s, or infinite (which a killed run would never give back)
RENEW_SECONDS = 20


def locks_folder(prefix: str) -> str:
    return f"locks/{quote('/' + prefix, safe='')}/"


class HeldLock(Exception):
    """The lock is held by someone else; the message says by whom and what to do."""


class Lease:
    """A lease on one lock blob, renewed in a background thread until released."""

    def __init__(self, store, name: str):
        self.store, self.name, self.lease_id = store, name, str(uuid.uuid4())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, fresh: bool = False) -> "Lease":
        """Lease the lock blob, creating it (and its container) when missing; HeldLock when
        another holds it. `fresh`: the blob is known not to exist yet (a run's own lock), so
        it is made first instead of after a refused lease."""
        if fresh:
            self._make()
        for attempt in (0, 1, 2):
            try:
                self.store.lease(self.name, "acquire", self.lease_id, LEASE_SECONDS)
                break
            except Exception as exc:
                code = error_code(exc)
                if code == "LeaseAlreadyPresent":
                    raise HeldLock(self.name) from None
                if code not in ("BlobNotFound", "ContainerNotFound") or attempt == 2:
                    raise
                self._make()
        self._thread = threading.Thread(target=self._renew, name="lock-renew", daemon=True)
        self._thread.start()
        return self

    def _make(self) -> None:
        for attempt in (0, 1):
            try:
                self.store.put(self.name, b"", md5=hashlib.md5(b"").digest(), content_type="text/plain",
                               metadata={})
                return
            except Exception as exc:
                code = error_code(exc)
                if code in ("LeaseIdMissing", "LeaseAlreadyPresent"):
                    return  # made and leased meanwhile by another: the lease says who wins
                if code != "ContainerNotFound" or attempt == 1:
                    raise
                self.store.create_container()  # the first use of this destination's history

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.store.lease(self.name, "renew", self.lease_id)
            except Exception:
                pass  # tried again at the next turn; a lease lost here shows as "expired"

    def release(self, delete: bool = True) -> Exception | None:
        """Stop renewing, and delete the lock blob (or give the lease back); the error when
        that was refused. Nothing waits on it: the lease ends by itself within LEASE_SECONDS,
        but a lock blob left behind each run says the credentials may not delete."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            if delete:
                self.store.delete(self.name, lease_id=self.lease_id)
            else:
                self.store.lease(self.name, "release", self.lease_id)
        except Exception as exc:
            return exc
        return None


def backup_lock(history_store, prefix: str, run_id: str) -> Lease:
    """The lock a backup run holds while it runs: one per attempt, so backups do not exclude
    each other, and a flow run retried after a crash (the same run id) does not wait for
    the lease its crashed attempt left."""
    return Lease(history_store, f"{locks_folder(prefix)}backup-{run_id}.{uuid.uuid4().hex[:8]}").acquire(fresh=True)


def running_backups(history_store, prefix: str) -> tuple[list[str], list[str]]:
    """(lock blobs of backups running now, lock blobs left by runs that ended without
    releasing them: killed, their lease expired)."""
    running, stale = [], []
    try:
        for name, state, _ in history_store.list_leases(f"{locks_folder(prefix)}backup-"):
            (running if state == "leased" else stale).append(name)
    except Exception as exc:
        if error_code(exc) != "ContainerNotFound":
            raise
    return running, stale


def select_runs(runs: list[RunRecord], keep_last: int = 0, keep_daily: int = 0, keep_weekly: int = 0,
                keep_monthly: int = 0) -> set[str]:
    """The run ids a policy keeps, with restic's rules: newest first, --keep-last keeps the
    N newest; --keep-daily D the newest run of each of the last D days that have runs (and
    so on for ISO weeks and months); a run is kept when any rule keeps it. Days, weeks and
    months are UTC, by the time a run finished."""
    rules = [(keep_last, lambda t: id(t)), (keep_daily, lambda t: t.date()),
             (keep_weekly, lambda t: t.isocalendar()[:2]), (keep_monthly, lambda t: (t.year, t.month))]
    left = [n for n, _ in rules]
    last = [None] * len(rules)
    kept = set()
    for run in sorted(runs, key=lambda r: (r.finished, r.run_id), reverse=True):
        when = run.finished.astimezone(dt.timezone.utc)
        for i, (_, bucket) in enumerate(rules):
            key = bucket(when) if i else run.run_id
            if left[i] > 0 and key != last[i]:
                last[i] = key
                left[i] -= 1
                kept.add(run.run_id)
    return kept


@dataclass
class PrunePlan:
    kept: list[RunRecord] = field(default_factory=list)
    deleted: list[RunRecord] = field(default_factory=list)
    snapshots: list[tuple[str, str, int]] = field(default_factory=list)  # (blob, snapshot time, size) to delete
    snapshots_kept: int = 0
    # Copies of deleted blobs (--delete-missing) in the history container no kept run needs:
    # (name there, snapshot time or None for the copy itself, size).
    attic: list[tuple[str, str | None, int]] = field(default_factory=list)


def _key(name: str, size: int, md5: bytes | None) -> bytes:
    """A short fingerprint of (blob, size, MD5): the needed set stays small at 10^6 files."""
    return hashlib.blake2b(f"{name}\0{size}\0".encode("utf-8", "surrogatepass") + (md5 or b""),
                           digest_size=12).digest()


def plan_prune(history_store, backup_store, prefix: str, runs: list[RunRecord], kept_ids: set[str]) -> PrunePlan:
    """Manifests outside the policy, and the snapshots that no kept run needs: for each blob
    the current content serves whoever needs it, then the earliest snapshot of each content
    a kept run needs (the one restore reads); every other snapshot goes. Current blobs and
    versions are never touched."""
    plan = PrunePlan([r for r in runs if r.run_id in kept_ids], [r for r in runs if r.run_id not in kept_ids])
    needed: set[bytes] = set()
    for run in plan.kept:
        for line in read_manifest(history_store, run.manifest):
            if "p" in line:
                md5 = base64.b64decode(line["m"]) if line.get("m") else None
                needed.add(_key(blob_name(prefix, line["p"]), line["s"], md5))
    group: list = []

    def settle(group: list) -> None:
        served = {_key(k.name, k.size, k.content_md5) for k in group if k.current and not k.snapshot}
        for k in sorted((k for k in group if k.snapshot), key=lambda k: k.snapshot):
            key = _key(k.name, k.size, k.content_md5)
            if key in needed and key not in served:
                served.add(key)
                plan.snapshots_kept += 1
            else:
                plan.snapshots.append((k.name, k.snapshot, k.size))

    for k in backup_store.list_kept(f"{prefix}/" if prefix else ""):
        if group and k.name != group[0].name:
            settle(group)
            group = []
        group.append(k)
    if group:
        settle(group)
    _plan_attic(plan, history_store, prefix, needed)
    return plan


def _plan_attic(plan: PrunePlan, history_store, prefix: str, needed: set[bytes]) -> None:
    """The copies of deleted blobs no kept run needs: the earliest copy of each needed
    content stays. A copy is deleted only with every snapshot of it (Azure refuses a blob
    with snapshots), so one whose snapshot stays is kept too."""
    from .history import attic_kept
    from .mirror import attic_folder

    folder = attic_folder(prefix)
    by_name: dict[str, list] = {}
    for k in attic_kept(history_store, prefix):
        by_name.setdefault(k.name, []).append(k)
    for name, copies in by_name.items():
        served, going = set(), []
        for k in sorted(copies, key=lambda k: (k.snapshot is None, k.snapshot or "")):
            key = _key(name, k.size, k.content_md5)
            if key in needed and key not in served:
                served.add(key)
                plan.snapshots_kept += 1
            else:
                going.append(k)
        snapshots_stay = any(k.snapshot for k in copies if k not in going)
        plan.attic += [(folder + name, k.snapshot, k.size) for k in going if k.snapshot or not snapshots_stay]


def prune(history_store, backup_store, prefix: str, *, keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0,
          dry_run=False) -> tuple[PrunePlan, list[str]]:
    """Apply the policy: refuses (HeldLock) while a backup of this destination runs or
    another prune does; with `dry_run`, only plans. Returns the plan and the stale locks
    removed."""
    if not (keep_last or keep_daily or keep_weekly or keep_monthly):
        raise ConfigurationError("no retention policy: give at least one of --keep-last, --keep-daily, "
                                 "--keep-weekly, --keep-monthly (prune never deletes every run)")
    try:
        lock = Lease(history_store, f"{locks_folder(prefix)}prune").acquire()
    except HeldLock:
        raise HeldLock("another prune of this destination is running: try again when it has finished "
                       f"(its lock expires {LEASE_SECONDS} s after it stops)") from None
    try:
        running, stale = running_backups(history_store, prefix)
        if running:
            ids = ", ".join(sorted({n.rsplit("backup-", 1)[-1].rsplit(".", 1)[0] for n in running}))
            raise HeldLock(f"a backup of this destination is running (run {ids}): prune when it has finished; "
                           f"the lock of a run that was killed expires within {LEASE_SECONDS} s")
        runs = list_runs(history_store, prefix)
        plan = plan_prune(history_store, backup_store, prefix, runs,
                          select_runs(runs, keep_last, keep_daily, keep_weekly, keep_monthly))
        if not dry_run:
            for name in stale:
                history_store.delete(name)
            # Manifests first: stopped half-way, what is left are snapshots no run needs,
            # which the next prune removes; never a run whose content is gone.
            for run in plan.deleted:
                history_store.delete(run.manifest)
            for name, snapshot, _ in plan.snapshots:
                backup_store.delete_kept(name, snapshot=snapshot)
            # Snapshots of attic copies before the copies themselves.
            for name, snapshot, _ in sorted(plan.attic, key=lambda a: a[1] is None):
                history_store.delete_kept(name, snapshot=snapshot)
        return plan, stale
    finally:
        lock.release()


def describe_run(run: RunRecord) -> str:
    return f"{iso(run.finished)}  {run.run_id}  {run.files} files  {run.outcome}"
