"""Retention: which runs a policy keeps (restic's --keep-* rules), deleting the manifests of
the others and the snapshots and attic copies no run of any destination needs.

A prune forgets only runs of its own prefix, but other destinations of the container can
need the same blobs: a prefix's blobs are also those of its ancestors ('x/y/a' is file 'a'
of prefix 'x/y' and file 'y/a' of prefix 'x'). So the needed set holds what the kept runs
of this prefix and every run of each overlapping prefix (site_backup/locks.py) name under
this prefix; a snapshot or attic copy outside it goes. Runs of other prefixes all count as
kept: this prune does not touch them. Locks (site_backup/locks.py) keep it from running
alongside a backup or prune of an overlapping prefix.

Cost: every manifest of every overlapping destination is read (streamed, about 40 bytes a
file a run, compressed; for the empty prefix, every manifest of the container). Memory is
the needed set: one 12-byte fingerprint per distinct (blob, size, MD5), about 100 bytes
each in Python, so unchanged files count once however many runs name them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Iterable

from .errors import ConfigurationError
from .names import attic_folder, blob_folder, blob_name
from .history import RunRecord, attic_kept, iso, read_manifest, runs_by_prefix
from .locks import HeldLock, lock_for_prune, overlaps  # noqa: F401 - HeldLock: what callers catch


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


def needed_keys(prefix: str, manifests: Iterable[tuple[str, Iterable[dict]]]) -> set[bytes]:
    """Fingerprints of the content that `manifests` ((the run's prefix, its lines), for
    every run that stays) name under `prefix`: what a prune of `prefix` must keep."""
    scope = blob_folder(prefix)
    needed: set[bytes] = set()
    for run_prefix, lines in manifests:
        for line in lines:
            if "p" in line:
                name = blob_name(run_prefix, line["p"])
                if name.startswith(scope):
                    md5 = base64.b64decode(line["m"]) if line.get("m") else None
                    needed.add(_key(name, line["s"], md5))
    return needed


def staying_runs(prefix: str, runs: dict[str, list[RunRecord]], kept_ids: set[str]) -> Iterable[tuple[str, RunRecord]]:
    """(prefix, run) of every run a prune of `prefix` leaves whose blobs can be under it: the
    kept runs of `prefix`, and every run of an overlapping destination."""
    for other, records in runs.items():
        if overlaps(other, prefix):
            yield from ((other, r) for r in records if other != prefix or r.run_id in kept_ids)


def plan_prune(history_store, backup_store, prefix: str, runs: dict[str, list[RunRecord]],
               kept_ids: set[str]) -> PrunePlan:
    """Manifests of `prefix` outside the policy, and the snapshots under `prefix` that no
    staying run of any destination needs: for each blob the current content serves whoever
    needs it, then the earliest snapshot of each content a run needs (the one restore
    reads); every other snapshot goes. Current blobs and versions are never touched."""
    own = runs.get(prefix, [])
    plan = PrunePlan([r for r in own if r.run_id in kept_ids], [r for r in own if r.run_id not in kept_ids])
    needed = needed_keys(prefix, ((other, read_manifest(history_store, r.manifest))
                                  for other, r in staying_runs(prefix, runs, kept_ids)))
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

    for k in backup_store.list_kept(blob_folder(prefix)):
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


def prune(history_store, backup_store, prefix: str, *, open_lock_store, run_id: str, keep_last=0, keep_daily=0,
          keep_weekly=0, keep_monthly=0, dry_run=False) -> tuple[PrunePlan, list[str]]:
    """Apply the policy: refuses (HeldLock) while a backup or prune of an overlapping prefix
    holds its lock; with `dry_run`, only plans. Returns the plan and the stale locks removed
    (`open_lock_store(budget)`: the history store for the lock's own requests)."""
    if not (keep_last or keep_daily or keep_weekly or keep_monthly):
        raise ConfigurationError("no retention policy: give at least one of --keep-last, --keep-daily, "
                                 "--keep-weekly, --keep-monthly (prune never deletes every run)")
    lock, stale = lock_for_prune(open_lock_store, prefix, run_id)
    try:
        runs = runs_by_prefix(history_store)
        own = runs.get(prefix, [])
        plan = plan_prune(history_store, backup_store, prefix, runs,
                          select_runs(own, keep_last, keep_daily, keep_weekly, keep_monthly))
        if not dry_run:
            for k in stale:
                history_store.delete(k.name)
            # Manifests first: stopped half-way, what is left are snapshots no run needs,
            # which the next prune removes; never a run whose content is gone.
            for run in plan.deleted:
                history_store.delete(run.manifest)
            for name, snapshot, _ in plan.snapshots:
                backup_store.delete_kept(name, snapshot=snapshot)
            # Snapshots of attic copies before the copies themselves.
            for name, snapshot, _ in sorted(plan.attic, key=lambda a: a[1] is None):
                history_store.delete_kept(name, snapshot=snapshot)
        return plan, [k.name for k in stale]
    finally:
        lock.release()


def describe_run(run: RunRecord) -> str:
    return f"{iso(run.finished)}  {run.run_id}  {run.files} files  {run.outcome}"
