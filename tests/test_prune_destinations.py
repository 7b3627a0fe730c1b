"""A destination owns exactly its prefix, prune knows every destination, and locks keep a
prune and the backups whose history it touches apart; a run's lock goes on every exit
path. Real Azurite; real processes for the races."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import pytest

from flows.backup_site_content import backup_site_content
from flows.prune_backups import prune_backups
from flows.restore_site_content import restore_site_content
from site_backup import locks
from site_backup.copy import blob_name
from site_backup.credentials import azurite_connection_string
from site_backup.destination import Destination
from site_backup.errors import ConfigurationError
from site_backup.history import RunRecord, history_container, list_runs, open_history_store
from site_backup.locks import HeldLock, LockInfo, Lease, overlaps, take_lock
from site_backup.prune import _key, needed_keys, staying_runs
from tests.conftest import PROJECT, read_tree
from tests.faultproxy import FaultProxy


# --- pure rules -------------------------------------------------------------------------

def test_overlap_rule_is_equal_ancestor_or_descendant_by_folder():
    assert overlaps("x", "x") and overlaps("x", "x/y") and overlaps("x/y", "x") and overlaps("x/y", "x/y/z")
    assert overlaps("", "x/y") and overlaps("x/y", "") and overlaps("", "")
    assert not overlaps("x", "xy") and not overlaps("x/y", "x/z") and not overlaps("x/y", "x/yz")


def test_lock_names_say_whose_prefix_and_kind():
    info = LockInfo.parse("locks/%2Fx%2Fy/backup-run-1.ab12cd34", True, {"runid": "run-1", "host": "h", "pid": "7"})
    assert (info.prefix, info.kind, info.run_id, info.host, info.pid) == ("x/y", "backup", "run-1", "h", 7)
    assert LockInfo.parse("locks/%2F/prune-r2.0f0f0f0f", False, {}).prefix == ""
    assert LockInfo.parse("locks/%2F/prune", True, {}).kind == "prune"  # the lock of earlier releases
    assert LockInfo.parse("locks/%2F/other", True, {}) is None


def _line(path, data):
    import hashlib
    return {"p": path, "s": len(data), "m": base64.b64encode(hashlib.md5(data).digest()).decode()}


def test_needed_set_holds_what_overlapping_runs_name_under_the_prefix_only():
    import hashlib
    manifests = [("x/y", [_line("a", b"1")]), ("x", [_line("y/b", b"2"), _line("c", b"3")]),
                 ("", [_line("x/y/d", b"4"), _line("z", b"5")])]
    needed = needed_keys("x/y", manifests)
    expect = {_key(blob_name(p, line["p"]), line["s"], base64.b64decode(line["m"]))
              for p, lines in manifests for line in lines if blob_name(p, line["p"]).startswith("x/y/")}
    assert needed == expect and len(needed) == 3  # x/y/a, x/y/b, x/y/d; not x/c nor z
    # the same content named by many runs counts once
    assert len(needed_keys("", [("", [_line("f", b"1")])] * 50)) == 1
    assert _key("x/y/a", 1, hashlib.md5(b"1").digest()) in needed


def test_staying_runs_are_kept_runs_of_the_prefix_and_every_run_of_overlapping_ones():
    import datetime as dt
    when = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    run = lambda i: RunRecord(i, when, when, "completed", 1, 1, i)  # noqa: E731
    runs = {"x": [run("x1"), run("x2")], "x/y": [run("y1")], "x/z": [run("z1")], "": [run("e1")], "xy": [run("q1")]}
    staying = {(p, r.run_id) for p, r in staying_runs("x/y", runs, kept_ids=set())}
    assert staying == {("x", "x1"), ("x", "x2"), ("", "e1")}  # not its own (none kept), nor siblings
    assert {r.run_id for _, r in staying_runs("x", runs, {"x2"})} == {"x2", "y1", "z1", "e1"}


class _FailingRenewals:
    def __init__(self):
        self.calls = []

    def put(self, *a, **kw):
        pass

    def lease(self, name, action, *a, **kw):
        self.calls.append(action)
        if action == "renew":
            raise OSError("storage went away")

    def delete(self, *a, **kw):
        pass


def test_a_lease_that_cannot_be_renewed_is_reported(monkeypatch):
    monkeypatch.setattr(locks, "RENEW_SECONDS", 0.01)
    store, warned = _FailingRenewals(), threading.Event()
    messages = []
    lease = Lease(lambda budget: store, "locks/%2F/backup-r.1", "r",
                  warn=lambda m: (messages.append(m), warned.set())).acquire()
    try:
        assert warned.wait(10)
    finally:
        lease.release()
    assert "locks/%2F/backup-r.1 could not be renewed (OSError: storage went away)" in messages[0]
    assert "a prune may run alongside this run" in messages[0]


# --- case 2: prune knows every destination ----------------------------------------------

def snapshots(storage, container):
    return sorted((b.name, b.snapshot) for b in storage.container(container).list_blobs(include=["snapshots"])
                  if b.snapshot)


@pytest.mark.parametrize("pruned", ["x", ""])
def test_prune_keeps_what_the_runs_of_other_prefixes_need(storage, checkpoints, container_name, make_tree, tmp_path,
                                                           pruned):
    a = make_tree({"a.txt": b"first", "same.txt": b"same"}, name="A")
    first_state = read_tree(a)
    backup_site_content(str(a), container=container_name, prefix="x/y")
    (a / "a.txt").write_bytes(b"second, longer")
    backup_site_content(str(a), container=container_name, prefix="x/y")
    b = make_tree({"b.txt": b"b"}, name="B")
    backup_site_content(str(b), container=container_name, prefix="x")
    assert [n for n, _ in snapshots(storage, container_name)] == ["x/y/a.txt"]
    history = open_history_store(Destination.checked(container_name))
    first = list_runs(history, "x/y")[0]

    done = prune_backups(container_name, prefix=pruned, keep_last=1)

    assert done.snapshots_deleted == 0 and done.manifests_deleted == 0
    assert [n for n, _ in snapshots(storage, container_name)] == ["x/y/a.txt"]
    target = tmp_path / "restored"
    restored = restore_site_content(container_name, str(target), prefix="x/y", run_id=first.run_id)
    assert restored.outcome == "completed" and read_tree(target) == first_state
    assert len(list_runs(history, "x/y")) == 2 and len(list_runs(history, "x")) == 1


def test_prune_still_deletes_what_no_destination_needs(storage, checkpoints, container_name, make_tree):
    a = make_tree({"a.txt": b"one"}, name="A")
    for text in (b"two", b"three"):
        backup_site_content(str(a), container=container_name, prefix="x/y")
        (a / "a.txt").write_bytes(text)
    backup_site_content(str(a), container=container_name, prefix="x/y")
    backup_site_content(str(make_tree({"b.txt": b"b"}, name="B")), container=container_name, prefix="x")
    assert len(snapshots(storage, container_name)) == 2
    done = prune_backups(container_name, prefix="x/y", keep_last=1)  # x needs none of x/y's old contents
    assert (done.manifests_deleted, done.snapshots_deleted) == (2, 2) and snapshots(storage, container_name) == []


# --- locks -------------------------------------------------------------------------------

def lock_blobs(storage, container):
    return {b.name: b.lease.state for b in storage.container(history_container(container)).list_blobs(
        name_starts_with="locks/")}


def test_two_prunes_of_overlapping_prefixes_exclude_each_other(storage, checkpoints, container_name, make_tree):
    backup_site_content(str(make_tree({"a.txt": b"a"})), container=container_name, prefix="x/y")
    other = take_lock(partial(open_history_store, Destination.checked(container_name)), "x", "prune", "prune-1")
    try:
        with pytest.raises(HeldLock, match=r"a prune of prefix 'x' \(run prune-1 on .*\) is running"):
            prune_backups(container_name, prefix="x/y", keep_last=1)
        assert prune_backups(container_name, prefix="q", keep_last=1).runs_total == 0  # no overlap: goes on
    finally:
        other.release()
    assert list(lock_blobs(storage, container_name)) == []  # the refused prune left no lock either


@pytest.mark.parametrize("shard", [None, "0/1"])  # a shard run writes no manifest; its lock counts the same
def test_a_backup_refuses_before_any_snapshot_while_an_overlapping_prune_holds_its_lock(
        storage, checkpoints, container_name, make_tree, monkeypatch, shard):
    root = make_tree({"a.txt": b"old"})
    backup_site_content(str(root), container=container_name, prefix="site")
    (root / "a.txt").write_bytes(b"new content")  # the next run would snapshot a.txt
    monkeypatch.setattr(locks, "PRUNE_WAIT_SECONDS", 0.5)
    prune = take_lock(partial(open_history_store, Destination.checked(container_name)), "", "prune", "prune-2")
    try:
        with pytest.raises(HeldLock, match=r"a prune of prefix '\(none\)' \(run prune-2 .*this backup waited"):
            backup_site_content(str(root), container=container_name, prefix="site", shard=shard)
        assert snapshots(storage, container_name) == []
        assert storage.container(container_name).download_blob("site/a.txt").readall() == b"old"
        assert list(lock_blobs(storage, container_name)) == [prune.name]  # its own lock is gone
    finally:
        prune.release()


def test_a_backup_waits_for_an_overlapping_prune_then_runs(storage, checkpoints, container_name, make_tree,
                                                             monkeypatch):
    root = make_tree({"a.txt": b"old"})
    backup_site_content(str(root), container=container_name, prefix="site")
    (root / "a.txt").write_bytes(b"new content")
    prune = take_lock(partial(open_history_store, Destination.checked(container_name)), "", "prune", "prune-3")
    polls, real = [], locks.conflicts

    def recorded(*args, **kwargs):  # what the backup found each time it looked
        found = real(*args, **kwargs)
        polls.append([k.run_id for k in found])
        return found

    monkeypatch.setattr(locks, "conflicts", recorded)
    seen = []

    def release_once_the_backup_waits():
        deadline = time.monotonic() + 60
        while polls.count(["prune-3"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append((snapshots(storage, container_name),  # what the waiting backup had done
                     storage.container(container_name).download_blob("site/a.txt").readall()))
        prune.release()

    watcher = threading.Thread(target=release_once_the_backup_waits)
    watcher.start()
    try:
        summary = backup_site_content(str(root), container=container_name, prefix="site")
    finally:
        watcher.join()
    assert polls.count(["prune-3"]) >= 2 and polls[-1] == []  # it waited, then went on
    assert seen == [([], b"old")]  # nothing snapshotted or uploaded while it waited
    assert summary.outcome == "completed" and summary.files_changed == 1
    assert len(snapshots(storage, container_name)) == 1


def test_a_run_ended_by_a_configuration_error_releases_its_lock(storage, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"a"})
    # The checkpoint block is looked up after the lock is taken.
    with pytest.raises(ConfigurationError, match="nope"):
        backup_site_content(str(root), container=container_name, checkpoint_block="nope")
    assert lock_blobs(storage, container_name) == {}
    assert prune_backups(container_name, keep_last=1).runs_total == 0  # not refused


def test_prune_refuses_while_a_backup_of_an_overlapping_prefix_runs_and_sigterm_releases_its_lock(
        storage, checkpoints, container_name, make_tree, prefect_server):
    # A backup to prefix `site` (a real process) holds its lock while its uploads wait in the
    # proxy; a prune of the empty prefix must refuse and name it; SIGTERM gives the lock back.
    old = make_tree({f"d/f{i:03d}.txt": b"old %d" % i for i in range(50)})
    backup_site_content(str(old), container=container_name, prefix="site")
    for i in range(50):
        (old / f"d/f{i:03d}.txt").write_bytes(b"new content %d" % i)
    env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints), PREFECT_API_URL=prefect_server)
    with FaultProxy(storage.port) as proxy:
        proxy.gate = lambda method, where, query, headers: (  # the uploads, not the snapshots before them
            method == "PUT" and where.startswith(f"{container_name}/") and query.get("comp") in (None, "block", "blocklist"))
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite_connection_string(
            f"http://127.0.0.1:{proxy.port}/devstoreaccount1")
        backup = subprocess.Popen(
            [sys.executable, "flows/backup_site_content.py", str(old), "--container", container_name, "--prefix",
             "site", "--files-in-flight", "1", "--no-progress"], cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not proxy.held.is_set() and backup.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.held.is_set(), (proxy.log, backup.poll())
            [(lock, state)] = lock_blobs(storage, container_name).items()
            assert state == "leased" and "/backup-" in lock
            run_id = lock.rsplit("backup-", 1)[1].rsplit(".", 1)[0]
            prune_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=storage.connection_string)
            taken = snapshots(storage, container_name)  # before each held upload, the old content's
            assert taken
            refused = subprocess.run([sys.executable, "flows/prune_backups.py", container_name, "--keep-last", "1"],
                                     cwd=PROJECT, env=prune_env, capture_output=True, text=True, timeout=180)
            assert refused.returncode == 2, refused.stderr
            assert f"a backup of prefix 'site' (run {run_id} on" in refused.stderr
            assert "is running" in refused.stderr
            assert snapshots(storage, container_name) == taken  # the prune deleted nothing
            os.killpg(backup.pid, signal.SIGTERM)
            _, err = backup.communicate(timeout=60)
            assert backup.returncode == 143, err
        finally:
            if backup.poll() is None:
                os.killpg(backup.pid, signal.SIGKILL)
                backup.wait()
            proxy.release()
    assert lock_blobs(storage, container_name) == {}  # released, not left to expire
    assert prune_backups(container_name, prefix="site", keep_last=1).runs_total == 1  # not refused
