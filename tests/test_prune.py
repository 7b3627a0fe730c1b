"""Retention on a real Azurite: the policy, dry run, the lock held by a running backup, and
a lock left by a killed run."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest

from flows.backup_site_content import backup_site_content
from flows.prune_backups import prune_backups
from flows.restore_site_content import restore_site_content
from site_backup.destination import Destination
from site_backup.history import RunRecord, history_container, list_runs, open_history_store
from site_backup.locks import HeldLock, LEASE_SECONDS, list_locks, locks_folder, take_lock
from site_backup.prune import select_runs
from tests.conftest import PROJECT, read_tree

UTC = dt.timezone.utc


def run_at(run_id, when):
    return RunRecord(run_id, when, when, "completed", 1, 1, run_id)



def backup_locks(store) -> tuple[list[str], list[str]]:
    """(leased backup lock blobs, the others: their holder stopped renewing) of the container."""
    locks = [lock for lock in list_locks(store) if lock.kind == "backup"]
    return [lock.name for lock in locks if lock.leased], [lock.name for lock in locks if not lock.leased]

def test_select_runs_follows_restics_rules():
    day = dt.datetime(2026, 11, 28, 23, tzinfo=UTC)
    # two runs a day for 40 days
    runs = [run_at(f"{d:02d}{h}", day - dt.timedelta(days=d, hours=h * 12)) for d in range(40) for h in (0, 1)]
    assert select_runs(runs, keep_last=3) == {"000", "001", "010"}
    assert select_runs(runs, keep_daily=3) == {"000", "010", "020"}  # the newest of each day
    weekly = select_runs(runs, keep_weekly=2)  # 2026-11-28 is a Saturday: its week, then the one before
    assert weekly == {"000", "060"}
    monthly = select_runs(runs, keep_monthly=2)
    assert monthly == {"000", "280"}  # November's newest, then October's newest (Oct 31)
    assert select_runs(runs, keep_last=1, keep_daily=2) == {"000", "010"}
    assert select_runs(runs) == set()


def snapshots(storage, container):
    return sorted((b.name, b.snapshot) for b in storage.container(container).list_blobs(include=["snapshots"])
                  if b.snapshot)


def test_prune_keeps_what_the_policy_needs_and_removes_the_rest(storage, checkpoints, container_name, make_tree,
                                                                tmp_path):
    root = make_tree({"a.txt": b"v0", "same.txt": b"never changes"})
    states = []
    for i in range(4):
        (root / "a.txt").write_bytes(f"version {i}".encode() * (i + 1))
        states.append(read_tree(root))
        backup_site_content(str(root), container=container_name)
    runs = list_runs(open_history_store(Destination.checked(container_name)), "")
    assert len(runs) == 4 and len(snapshots(storage, container_name)) == 3
    dry = prune_backups(container_name, keep_last=2, dry_run=True)
    assert (dry.manifests_deleted, dry.snapshots_deleted, dry.snapshots_kept) == (2, 2, 1)
    assert dry.bytes_freed > 0 and len(snapshots(storage, container_name)) == 3
    assert len(list_runs(open_history_store(Destination.checked(container_name)), "")) == 4
    done = prune_backups(container_name, keep_last=2)
    assert (done.manifests_deleted, done.snapshots_deleted, done.bytes_freed) == (2, 2, dry.bytes_freed)
    left = list_runs(open_history_store(Destination.checked(container_name)), "")
    assert [r.run_id for r in left] == [r.run_id for r in runs[2:]]
    assert len(snapshots(storage, container_name)) == 1
    for run, state in zip(left, states[2:]):  # each kept run still restores exactly
        target = tmp_path / run.run_id
        assert restore_site_content(container_name, str(target), run_id=run.run_id).outcome == "completed"
        assert read_tree(target) == state
    container = storage.container(container_name)
    assert container.download_blob("a.txt").readall() == states[3]["a.txt"]  # current blobs untouched
    again = prune_backups(container_name, keep_last=2)
    assert (again.manifests_deleted, again.snapshots_deleted) == (0, 0)


def test_prune_refuses_while_a_backup_holds_its_lock(storage, checkpoints, container_name, make_tree,
                                                     prefect_server):
    root = make_tree({"a.txt": b"a"})
    backup_site_content(str(root), container=container_name)
    history = partial(open_history_store, Destination.checked(container_name))
    # the backup released its lock when it ended
    assert [n for n in storage.container(history_container(container_name)).list_blobs(
        name_starts_with="locks/")] == []
    lock = take_lock(history, "", "backup", "run-under-way")  # what a running backup holds
    try:
        with pytest.raises(HeldLock, match=r"a backup of prefix '\(none\)' \(run run-under-way on .*\) is running"):
            prune_backups(container_name, keep_last=1)
        env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints), PREFECT_API_URL=prefect_server)
        cli = subprocess.run([sys.executable, "flows/prune_backups.py", container_name, "--keep-last", "1"],
                             cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and "error: a backup of prefix '(none)' (run run-under-way" in cli.stderr, cli.stderr
        none = subprocess.run([sys.executable, "flows/prune_backups.py", container_name], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert none.returncode == 2 and "no retention policy" in none.stderr
    finally:
        lock.release()
    assert prune_backups(container_name, keep_last=1).runs_kept == 1


def test_a_lock_left_by_a_killed_backup_is_recovered_once_its_lease_expires(storage, checkpoints, container_name,
                                                                             make_tree, prefect_server):
    files = {f"d{i % 10}/f{i:05d}.txt": os.urandom(3000) for i in range(4000)}
    root = make_tree(files)
    # The session's server: a temporary one per process took 162 s to start on the loaded machine.
    env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints), PREFECT_API_URL=prefect_server)
    proc = subprocess.Popen([sys.executable, "flows/backup_site_content.py", str(root), "--container", container_name,
                             "--files-per-batch", "100", "--files-in-flight", "2", "--parallel-batches", "1",
                             "--no-progress"], cwd=PROJECT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    history = storage.container(history_container(container_name))
    store = open_history_store(Destination.checked(container_name))
    deadline = time.monotonic() + 120
    try:
        while not backup_locks(store)[0]:
            assert time.monotonic() < deadline and proc.poll() is None, "the backup never took its lock"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        proc.wait()
    with pytest.raises(HeldLock, match="has ended without releasing its lock"):
        prune_backups(container_name, keep_last=1)
    # Nothing renews the lease now: Azure ends it within LEASE_SECONDS of the last renewal.
    while backup_locks(store)[0]:
        assert time.monotonic() - killed < LEASE_SECONDS + 30, "the killed run's lease did not expire"
        time.sleep(0.5)
    assert backup_locks(store)[1]  # the lock blob is there, its lease expired
    done = prune_backups(container_name, keep_last=1)
    assert done.stale_locks_removed == 1 and done.runs_total == 0  # the killed run wrote no manifest
    assert [b.name for b in history.list_blobs(name_starts_with=locks_folder(""))] == []


def test_a_flow_run_retried_after_a_crash_takes_a_lock_of_its_own(storage, container_name):
    # Prefect's flow-run retry keeps the run id; the crashed attempt's lease is still held.
    history = partial(open_history_store, Destination.checked(container_name))
    crashed = take_lock(history, "", "backup", "same-run")
    crashed._stop.set()  # it stops renewing, as a killed process would
    retried = take_lock(history, "", "backup", "same-run")  # did not wait for, nor raise on, the crashed lease
    assert retried.name != crashed.name
    assert sorted(backup_locks(history())[0]) == sorted([crashed.name, retried.name])
    assert retried.release() is None and crashed.release() is None
    assert backup_locks(history()) == ([], [])
