"""History's plain logic on the in-memory store: manifests, picking a run, where content lives."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os

import pytest

from site_backup.copy import BatchResult, CopyOptions, copy_batch
from site_backup.errors import ConfigurationError
from site_backup.files import FileEntry, list_batches
from site_backup.history import (
    ManifestWriter,
    RunRecord,
    history_container,
    list_runs,
    parse_as_of,
    pick_run,
    read_manifest,
    runs_folder,
)
from site_backup.history_restore import plan_run_restore
from tests.memory_store import MemoryBlobStore

UTC = dt.timezone.utc


def writer(store, prefix="", run="r1", when=dt.datetime(2026, 11, 1, tzinfo=UTC), **kw):
    return ManifestWriter(store, prefix, run, when, **kw)


def test_companion_container_names_are_valid_and_distinct():
    assert history_container("backups") == "backups-history"
    long_a, long_b = "a" * 60 + "xyz", "a" * 60 + "xyw"
    assert len(history_container(long_a)) <= 63 and history_container(long_a) != history_container(long_b)
    assert runs_folder("") != runs_folder("a") != runs_folder("a/b")
    assert "/" not in runs_folder("a/b")[len("runs/"):-1]


def test_manifest_round_trip_streams_blocks_and_is_written_once():
    store = MemoryBlobStore()
    w = writer(store, block_size=1000)
    odd = os.fsdecode(b"caf\xe9/\xff.txt")
    entries = [(f"d/f{i}.txt", i, hashlib.md5(str(i).encode()).digest(), 10**18 + i, None) for i in range(2000)]
    for i in range(0, 2000, 100):
        w.add_batch(BatchResult(entries=entries[i:i + 100]), [])
    w.add_batch(BatchResult(entries=[(odd, 1, None, None, "v1")]), [])
    assert len(w._blocks) >= 3 and store.blobs == {}  # staged while adding, nothing visible yet
    run = w.finish({"outcome": "completed"}, "/src", "dest", dt.datetime(2026, 11, 1, 0, 5, tzinfo=UTC))
    lines = list(read_manifest(store, run.manifest))
    assert lines[-1]["run"]["files"] == 2001 and lines[-1]["run"]["summary"] == {"outcome": "completed"}
    assert lines[0] == {"p": "d/f0.txt", "s": 0, "m": base64.b64encode(hashlib.md5(b"0").digest()).decode(),
                        "t": 10**18}
    assert lines[-2] == {"p": odd, "s": 1, "m": None, "t": None, "v": "v1"}
    assert list_runs(store, "") == [run] and run.files == 2001
    with pytest.raises(ValueError, match="BlobAlreadyExists"):
        store.commit_new(run.manifest, [], md5=b"", content_type="", metadata={})
    # a retried commit of a landed one is no error
    assert w.finish({}, "", "", dt.datetime.now(UTC)) == run


def test_a_truncated_manifest_is_refused():
    import gzip

    store = MemoryBlobStore()
    data = gzip.compress(b'{"p":"a","s":1,"m":null,"t":1}\n')
    store.put("m", data, md5=hashlib.md5(data).digest(), content_type="", metadata={})
    with pytest.raises(ValueError, match="incomplete"):
        list(read_manifest(store, "m"))


def test_checkpoints_without_entries_are_looked_up_in_the_backup(make_tree):
    root = make_tree({"a.txt": b"aa", "b/c.txt": b"ccc", "gone.txt": b"x"})
    backup = MemoryBlobStore()
    batch = [f for b in list_batches(str(root)).batches for f in b]
    copy_batch(str(root), batch, backup, "p", CopyOptions())
    from site_backup.files import Problem

    old = BatchResult(files_unchanged=2, failed=[Problem("gone.txt", "x")])  # entries None: an old checkpoint
    w = writer(MemoryBlobStore(), prefix="p", backup_store=backup)
    w.add_batch(old, batch)
    run = w.finish({}, "", "", dt.datetime.now(UTC))
    assert run.files == 2


def run_record(i, finished, run_id=None):
    return RunRecord(run_id or f"{i:02d}aa", finished - dt.timedelta(minutes=5), finished, "completed", 1, 1, f"m{i}")


def test_pick_run_by_id_prefix_and_as_of():
    runs = [run_record(1, dt.datetime(2026, 11, 24, 2, tzinfo=UTC)), run_record(2, dt.datetime(2026, 11, 25, 2,
                                                                                               tzinfo=UTC)),
            run_record(3, dt.datetime(2026, 11, 25, 23, tzinfo=UTC))]
    assert pick_run(runs, "02").run_id == "02aa"
    assert pick_run(runs, as_of="2026-11-24").run_id == "01aa"
    assert pick_run(runs, as_of="2026-11-25").run_id == "03aa"  # a date: the end of that day
    assert pick_run(runs, as_of="2026-11-25T03:00:00+01:00").run_id == "02aa"
    assert pick_run(runs, as_of="2026-11-25T01:59:59").run_id == "01aa"  # no offset: UTC
    for bad, message in [(dict(run_id="0"), "matches 3 runs"), (dict(run_id="9"), "matches no run"),
                         (dict(as_of="2026-11-23"), "no backup finished by"), (dict(as_of="Tuesday"), "not a date")]:
        with pytest.raises(ConfigurationError, match=message):
            pick_run(runs, **bad)
    with pytest.raises(ConfigurationError, match="no backup history yet"):
        pick_run([], "x")
    assert parse_as_of("2026-11-25").tzinfo is not None


def test_plan_takes_current_blob_else_the_earliest_matching_snapshot_else_refuses(make_tree):
    root = make_tree({"a.txt": b"one", "b.txt": b"bee", "c.txt": b"sea"})
    backup = MemoryBlobStore()
    batch = [f for b in list_batches(str(root)).batches for f in b]
    history = MemoryBlobStore()
    w = writer(history, run="r1")
    w.add_batch(BatchResult.from_outcomes(copy_batch(str(root), batch, backup, "", CopyOptions())), batch)
    first = w.finish({"outcome": "completed"}, "", "", dt.datetime.now(UTC))
    (root / "a.txt").write_bytes(b"two")
    (root / "c.txt").write_bytes(b"see")
    copy_batch(str(root), batch, backup, "", CopyOptions())
    (root / "c.txt").write_bytes(b"sea")  # back to run 1's content: the current blob serves it again
    copy_batch(str(root), batch, backup, "", CopyOptions())
    del backup.snapshots[next(k for k in backup.snapshots if k[0] == "c.txt")]  # c's "sea" snapshot, pruned
    backup.blobs.pop("b.txt")  # deleted by someone else, no snapshot
    plan = plan_run_restore(history, first, backup, "", 100, 2**30)
    where = {e.path: e.where for b in plan.batches for e in b}
    assert where["a.txt"].startswith("snapshot:") and where["c.txt"] is None
    assert [p.path for p in plan.refused] == ["b.txt"] and "no longer stored" in plan.refused[0].reason


def test_a_storage_error_while_staging_gives_up_the_manifest_not_the_backup():
    class Failing(MemoryBlobStore):
        def stage_block(self, name, block_id, data):
            raise OSError("connection reset")

    w = writer(Failing(), block_size=10)
    w.add_batch(BatchResult(entries=[("a", 1, None, 1, None)] * 50), [])
    w.add_batch(BatchResult(entries=[("b", 1, None, 1, None)]), [])
    assert "connection reset" in w.broken and w.files < 51


def test_a_lock_blob_that_may_not_be_deleted_is_handed_back_not_swallowed():
    """A SAS without the delete permission: the run goes on, and its warning names the refusal."""
    from site_backup.locks import Lease

    class RefusesDelete:
        def put(self, *args, **kwargs):
            pass

        def lease(self, *args, **kwargs):
            pass

        def delete(self, name, lease_id=None):
            raise PermissionError("403 AuthorizationPermissionMismatch")

    lock = Lease(lambda budget: RefusesDelete(), "locks/run", "run").acquire()
    refused = lock.release()
    assert isinstance(refused, PermissionError) and "AuthorizationPermissionMismatch" in str(refused)
    assert Lease(lambda budget, store=MemoryLockStore(): store, "locks/run", "run").acquire().release() is None


class MemoryLockStore:
    def __init__(self):
        self.blobs = set()

    def put(self, name, *args, **kwargs):
        self.blobs.add(name)

    def lease(self, *args, **kwargs):
        pass

    def delete(self, name, lease_id=None):
        self.blobs.remove(name)


def test_a_sharded_run_commits_one_manifest_of_its_shards_parts_and_none_when_one_is_missing():
    """Each shard stages its part (a gzip member) into the sharded run's manifest; the run
    commits the parts and its own line as one manifest, read back whole. A shard that left
    no part (it failed) means no manifest: the run is not completed."""
    from site_backup.run_history import RunHistory
    from site_backup.summary import BackupSummary

    def sharded(store, run):
        parent = writer(store, run=run)
        parts = []
        for k in range(3):
            shard = writer(store, run=f"{run}-shard{k}", block_size=100, name=parent.name)
            shard.add_batch(BatchResult(entries=[(f"s{k}/f{i}", i, None, i, None) for i in range(40)]), [])
            parts.append(shard.finish_part())
        assert store.blobs == {} or parent.name not in store.blobs  # staged only
        return RunHistory(parent), parts

    store = MemoryBlobStore()
    history, parts = sharded(store, "whole")
    summary = BackupSummary(root="/src", destination="dest", files_total=120)
    record = history.commit(summary, parts)
    lines = list(read_manifest(store, record.manifest))
    assert [line["p"] for line in lines[:-1]] == [f"s{k}/f{i}" for k in range(3) for i in range(40)]
    assert lines[-1]["run"]["files"] == 120 and lines[-1]["run"]["summary"]["files_total"] == 120
    assert (record.files, record.bytes) == (120, 3 * sum(range(40))) and list_runs(store, "") == [record]
    assert store.blobs[record.manifest].content_md5 is None  # each member's CRC-32 checks it instead

    warnings = []
    history, parts = sharded(store, "partial")
    history.warn = warnings.append
    assert history.commit(summary, [parts[0], None, parts[2]]) is None
    assert list_runs(store, "") == [record]
    assert warnings == ["no manifest for this run (its files are backed up): a shard left no part of the manifest "
                        "(see its run's log)"]
