"""Mirror mode's rules on the in-memory store: what counts as missing, what is kept, and
how a deleted blob's content is kept (snapshots copied aside, or a version)."""

from __future__ import annotations

import hashlib

from site_backup.files import Batch, FileEntry, FileListing, Problem
from site_backup.mirror import attic_folder, blocker, delete_missing, excluded, missing_blobs
from site_backup.storage import MemoryBlobStore
from site_backup.files import compile_patterns


def put(store, name, data=b"x", metadata=None):
    store.put(name, data, md5=hashlib.md5(data).digest(), content_type="text/plain", metadata=metadata or {})


def listing(*paths, skipped=(), failed=()):
    return FileListing(root="/r", batches=[Batch(FileEntry(p, 1, 0) for p in paths)],
                       skipped=[Problem(p, "symbolic link") for p in skipped],
                       failed=[Problem(p, "cannot read folder: Permission denied") for p in failed])


def missing(store, walk, prefix="", **kw):
    return sorted(name for name, *_ in missing_blobs(store, prefix, walk, **kw))


def test_only_blobs_of_files_the_tree_lost_are_missing():
    store = MemoryBlobStore()
    for name in ["p/a.txt", "p/gone.txt", "p/old/x.txt", "p/keep.log", "p/link/in.txt", "p/d/", "p/mark",
                 "p/bad\u201bname", "q/other.txt", "p/nested/n.txt"]:
        put(store, name, metadata={"hdi_isfolder": "true"} if name == "p/mark" else None)
    walk = listing("a.txt", skipped=["link"])
    found = missing(store, walk, "p", exclude=["*.log"], nested=["p/nested/"])
    # kept: the file, an excluded one, everything under a skipped link, a folder marker, a
    # name ending in '/', a name this tool would not write, another prefix, a nested destination
    assert found == ["p/gone.txt", "p/old/x.txt"]


def test_exclusion_follows_the_walk():
    inc, exc = compile_patterns(["*.html"]), compile_patterns(["cache/", "*.tmp"])
    assert excluded("cache/a.html", inc, exc)  # a folder excluded on the way
    assert excluded("a.css", inc, exc)  # not included
    assert excluded("x/b.tmp", [], exc)
    assert not excluded("x/a.html", inc, exc)


def test_any_failure_blocks_every_deletion():
    assert "could not be read" in blocker(listing("a", failed=["sub"]), "incomplete", 1)
    assert "run failed" in blocker(listing("a"), "failed", 0)
    assert "1 file(s) failed" in blocker(listing("a"), "incomplete", 1)
    assert blocker(listing("a"), "completed", 0) == ""


def test_a_deleted_blob_and_its_snapshots_are_copied_to_the_attic_first():
    store, history = MemoryBlobStore(), MemoryBlobStore()
    put(store, "gone.txt", b"one")
    store.snapshot("gone.txt")
    put(store, "gone.txt", b"two")
    put(store, "a.txt")
    dry = delete_missing(store, history, "", listing("a.txt"), dry_run=True)
    assert dry.deleted == ["gone.txt"] and "gone.txt" in store.blobs and not history.blobs
    done = delete_missing(store, history, "", listing("a.txt"))
    assert done.deleted == ["gone.txt"] and done.bytes_deleted == 3
    assert "gone.txt" not in store.blobs and not store.snapshots
    attic = attic_folder("") + "gone.txt"
    assert history.blobs[attic].data == b"two"
    assert [b.data for (n, _), b in history.snapshots.items() if n == attic] == [b"one"]


def test_on_a_versioning_account_delete_blob_alone_keeps_the_content():
    store, history = MemoryBlobStore(versioning=True), MemoryBlobStore()
    put(store, "gone.txt", b"old")
    done = delete_missing(store, history, "", listing())
    assert done.deleted == ["gone.txt"] and not history.blobs
    assert [b.data for b in store.snapshots.values()] == [b"old"]  # the previous version


def test_a_blob_that_cannot_be_deleted_is_a_failed_file_and_the_rest_go_on(monkeypatch):
    store, history = MemoryBlobStore(), MemoryBlobStore()
    put(store, "a.txt")
    put(store, "b.txt")

    def refuse(name):
        if name == "a.txt":
            raise ValueError("AuthorizationPermissionMismatch: no delete permission")
        MemoryBlobStore.delete_with_snapshots(store, name)

    monkeypatch.setattr(store, "delete_with_snapshots", refuse)
    done = delete_missing(store, history, "", listing())
    assert done.deleted == ["b.txt"]
    assert [p.path for p in done.failed] == ["a.txt"] and "not deleted" in done.failed[0].reason


def test_prune_keeps_the_attic_copies_kept_runs_need_and_plans_the_rest():
    import datetime as dt

    from site_backup.copy import BatchResult
    from site_backup.history import ManifestWriter, list_runs
    from site_backup.prune import plan_prune

    store, history = MemoryBlobStore(), MemoryBlobStore()
    put(store, "gone.txt", b"one")
    manifest = ManifestWriter(history, "", "r1", dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))
    manifest.add_batch(BatchResult(entries=[("gone.txt", 3, hashlib.md5(b"one").digest(), 0, None)]), [])
    manifest.finish({"outcome": "completed"}, "/r", "d", dt.datetime(2026, 11, 1, 1, tzinfo=dt.timezone.utc))
    store.snapshot("gone.txt")
    put(store, "gone.txt", b"two")
    delete_missing(store, history, "", listing())
    runs = list_runs(history, "")
    attic = attic_folder("") + "gone.txt"
    keep_r1 = plan_prune(history, store, "", {"": runs}, {"r1"})
    # r1 needs "one" (the copy's snapshot); the copy itself ("two") must stay with it
    assert keep_r1.attic == [] and keep_r1.snapshots_kept == 1
    keep_none = plan_prune(history, store, "", {"": runs}, set())
    assert sorted(keep_none.attic, key=str) == sorted([(attic, None, 3), (attic, next(
        t for n, t in history.snapshots if n == attic), 3)], key=str)


def test_the_summary_counts_deletions_and_a_blob_not_deleted_as_a_failed_file():
    from site_backup.mirror import MirrorResult
    from site_backup.summary import BackupSummary

    summary = BackupSummary(files_total=2, files_uploaded=2)
    done = summary.with_deletions(MirrorResult(deleted=["old.txt"], bytes_deleted=3,
                                               failed=[Problem("locked.txt", "not deleted: 403 AuthorizationFailure")]))
    assert (done.files_deleted, done.bytes_deleted, done.files_failed, done.outcome) == (1, 3, 1, "incomplete")
    assert done.files_total == 2 and done.exit_code == 1
    text = done.to_text()
    assert "Deleted:      1 file(s) no longer in the tree, 3 B, deleted" in text
    assert "Deleted (1):" in text and "Failed (1):" in text and "locked.txt" in text
    assert "## Deleted (1)" in done.to_markdown()
    plain = BackupSummary().to_text()
    assert "Deleted" not in plain  # a run without the flag prints as before
