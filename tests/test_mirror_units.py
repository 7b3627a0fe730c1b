"""Mirror mode's rules on the in-memory store: what counts as missing, what is kept, and
how a deleted blob's content is kept (snapshots copied aside, or a version)."""

from __future__ import annotations

import hashlib

from site_backup.files import Batch, FileEntry, FileListing, Problem
from site_backup.mirror import attic_folder, blocker, delete_missing, excluded, missing_blobs
from tests.memory_store import MemoryBlobStore
from site_backup.globs import compile_patterns


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
    assert "1 file failed" in blocker(listing("a"), "incomplete", 1)
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
    done = delete_missing(store, history, "", listing(), max_delete="100%")
    assert done.deleted == ["gone.txt"] and not history.blobs
    assert [b.data for b in store.snapshots.values()] == [b"old"]  # the previous version


def test_a_blob_that_cannot_be_deleted_is_a_failed_file_and_the_rest_go_on(monkeypatch):
    store, history = MemoryBlobStore(), MemoryBlobStore()
    put(store, "a.txt")
    put(store, "b.txt")

    def refuse(name, if_match=None):
        if name == "a.txt":
            raise ValueError("AuthorizationPermissionMismatch: no delete permission")
        MemoryBlobStore.delete_with_snapshots(store, name, if_match)

    monkeypatch.setattr(store, "delete_with_snapshots", refuse)
    done = delete_missing(store, history, "", listing(), max_delete="100%")
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
    delete_missing(store, history, "", listing(), max_delete="100%")
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
    assert "Deleted:      1 file no longer in the tree, 3 B, deleted" in text
    assert "Deleted (1):" in text and "Failed (1):" in text and "locked.txt" in text
    assert "## Deleted (1)" in done.to_markdown()
    plain = BackupSummary().to_text()
    assert "Deleted" not in plain  # a run without the flag prints as before


# ---- issue 21: an empty walk or too many deletions delete nothing; conditions on the ETag ----


def test_max_delete_takes_a_count_or_a_share_and_names_both_forms_otherwise():
    import pytest

    from site_backup.errors import ConfigurationError
    from site_backup.mirror import DeleteLimit

    assert DeleteLimit.parse("50%").allowed(7) == 3 and DeleteLimit.parse(" 100% ").everything
    assert DeleteLimit.parse(12).allowed(10**6) == 12 and DeleteLimit.parse("0").allowed(5) == 0
    assert DeleteLimit.parse("33.3%").allowed(1000) == 333
    for bad in ("-1", "101%", "lots", "", "5%%", "1e3", True, "nan%"):
        with pytest.raises(ConfigurationError, match="neither a count of files .* nor a share"):
            DeleteLimit.parse(bad)


def test_an_empty_walk_deletes_nothing_and_says_what_to_pass():
    store, history = MemoryBlobStore(), MemoryBlobStore()
    for name in ("a.txt", "b.txt"):
        put(store, name)
    for dry_run in (True, False):  # a dry run decides the same
        refused = delete_missing(store, history, "", listing(), dry_run=dry_run, max_delete="99%")
        assert refused.deleted == [] and refused.refused.startswith("the walk found no file in the root, while the "
                                                                    "destination holds 2 files")
        assert "--max-delete 100%" in refused.refused
    assert sorted(store.blobs) == ["a.txt", "b.txt"] and not history.blobs
    # a count does not let an empty walk delete; only 100% does
    assert delete_missing(store, history, "", listing(), max_delete=10).refused
    assert delete_missing(store, history, "", listing(), max_delete="100%").deleted == ["a.txt", "b.txt"]


def test_more_deletions_than_the_limit_delete_nothing():
    store, history = MemoryBlobStore(), MemoryBlobStore()
    for i in range(10):
        put(store, f"f{i}.txt")
    put(store, "excluded.log")  # the destination's too: counted among its files, never deleted
    walk = listing("f0.txt", "f1.txt", "f2.txt", "f3.txt")
    refused = delete_missing(store, history, "", walk, exclude=["*.log"])  # 6 of 11 > 50%
    assert refused.refused.startswith("this run would delete 6 of the destination's 11 files (55%), more than "
                                      "--max-delete 50% allows")
    assert "pass --max-delete 6" in refused.refused and len(store.blobs) == 11
    assert delete_missing(store, history, "", walk, exclude=["*.log"], max_delete=5).refused
    done = delete_missing(store, history, "", walk, exclude=["*.log"], max_delete=6)
    assert not done.refused and len(done.deleted) == 6 and len(store.blobs) == 5
    # within the default: 1 of 5
    put(store, "f4.txt")
    assert delete_missing(store, history, "", walk, exclude=["*.log"]).deleted == ["f4.txt"]


def test_a_blob_rewritten_after_the_listing_is_kept_and_reported(monkeypatch):
    """The in-memory store answers a failed condition 412 as Azure does; the Azurite tests
    (tests/test_mirror_conditions.py) rewrite blobs for real."""
    store, history = MemoryBlobStore(), MemoryBlobStore()
    for name in ("a.txt", "copied.txt", "deleted.txt", "plain.txt"):
        put(store, name, b"listed")
    real_copy, real_delete = history.copy_in, store.delete_with_snapshots

    def copy_in(name, source, source_etag=None):
        if name.endswith("copied.txt"):
            put(store, "copied.txt", b"newer")  # another writer, between the listing and the copy
        real_copy(name, source, source_etag)

    def delete_with_snapshots(name, if_match=None):
        if name == "deleted.txt":
            put(store, "deleted.txt", b"newer")  # another writer, between the copy and the delete
        real_delete(name, if_match)

    monkeypatch.setattr(history, "copy_in", copy_in)
    monkeypatch.setattr(store, "delete_with_snapshots", delete_with_snapshots)
    done = delete_missing(store, history, "", listing("a.txt"), max_delete="100%")
    assert done.deleted == ["plain.txt"] and done.failed == []
    assert [(p.path, p.reason) for p in done.changed] == [
        ("copied.txt", "changed by another writer since this run listed it: kept"),
        ("deleted.txt", "changed by another writer since this run listed it: kept")]
    assert store.blobs["copied.txt"].data == store.blobs["deleted.txt"].data == b"newer"


def test_a_refused_deletion_fails_the_run_with_exit_code_2_and_no_deletions_listed():
    from site_backup.mirror import MirrorResult
    from site_backup.summary import BackupSummary

    why = "the walk found no file in the root, ... pass --max-delete 100% (flow parameter max_delete)"
    done = BackupSummary(files_total=0).with_deletions(MirrorResult(refused=why))
    assert (done.outcome, done.exit_code, done.deletion_refused, done.files_deleted) == ("failed", 2, True, 0)
    assert done.error == f"--delete-missing deleted nothing: {why}"
    text = done.to_text()
    assert "Deleted:      nothing, refused: see Error" in text and f"Error:        --delete-missing deleted nothing" in text
    changed = BackupSummary(files_total=1).with_deletions(MirrorResult(
        deleted=["b"], changed=[Problem("a", "changed by another writer since this run listed it: kept")]))
    assert (changed.outcome, changed.exit_code, changed.files_changed_meanwhile) == ("completed", 0, 1)
    assert "1 file changed by another writer meanwhile, not deleted" in changed.to_text()
    assert "Changed meanwhile, not deleted (1):" in changed.to_text()


def test_more_candidates_than_are_held_are_listed_again_and_no_more_are_deleted_than_counted(monkeypatch):
    import site_backup.mirror as mirror

    store, history = MemoryBlobStore(), MemoryBlobStore()
    for i in range(10):
        put(store, f"f{i}.txt")
    monkeypatch.setattr(mirror, "HELD_FOR_DELETION", 2)
    real_list = store.list
    listings = []

    def list_and_add(prefix):
        listings.append(prefix)
        if len(listings) == 2:  # another run uploads between the counting and the deleting listing
            put(store, "late.txt")
        return real_list(prefix)

    monkeypatch.setattr(store, "list", list_and_add)
    done = delete_missing(store, history, "", listing("f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt"))
    assert len(listings) == 2 and len(done.deleted) == 5  # 5 of 10 counted; at most 5 deleted
    assert len(store.blobs) == 6
