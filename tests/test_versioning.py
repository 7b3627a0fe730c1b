"""The versioning path of the real HTTP code (fastblob's direct requests and the SDK's
listing and download), against tests/versioning_stub.py: Azurite has no blob versioning.
What it shows: on an account that keeps versions no snapshot is made, the manifest
records the version each run wrote, restore of an earlier run reads that version with
?versionid=, and --delete-missing relies on the version instead of copying to the attic."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from site_backup.copy import BatchResult, CopyOptions, copy_batch
from site_backup.accounts import _account, open_store
from site_backup.credentials import azurite_connection_string
from site_backup.destination import Destination
from site_backup.files import list_batches
from site_backup.history import ManifestWriter, list_runs, open_history_store, read_manifest
from site_backup.history_restore import plan_run_restore, read_kept
from site_backup.mirror import delete_missing
from site_backup.restore import restore_batch
from tests.conftest import read_tree
from tests.versioning_stub import VersioningAccount


@pytest.fixture
def versioning_account(monkeypatch):
    with VersioningAccount() as account:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(account.url))
        _account.cache_clear()
        yield account
    _account.cache_clear()


def backup(root, store, history, run_id, minute):
    listing = list_batches(str(root))
    writer = ManifestWriter(history, "", run_id, dt.datetime(2026, 11, 29, 1, minute, tzinfo=dt.timezone.utc))
    outcomes = []
    for batch in listing.batches:
        done = copy_batch(listing.root, batch, store, "", CopyOptions())
        writer.add_batch(BatchResult.from_outcomes(done), batch)
        outcomes += done
    writer.finish({"outcome": "completed"}, str(root), "stub",
                  dt.datetime(2026, 11, 29, 1, minute, 30, tzinfo=dt.timezone.utc))
    assert not writer.broken, writer.broken
    return {o.path: o for o in outcomes}, listing


def test_a_versioning_account_keeps_versions_without_snapshots_and_restore_reads_them(versioning_account,
                                                                                      make_tree, tmp_path):
    account = versioning_account
    destination = Destination.checked("vers")
    store, history = open_store(destination), open_history_store(destination)
    assert store.signed is not None  # the direct requests, as in a real run
    store.create_container()
    history.create_container()
    root = make_tree({"a.txt": b"one", "b.txt": b"bee", "gone.txt": b"to be deleted"})
    first, _ = backup(root, store, history, "run1", 0)
    assert {p: o.version_id for p, o in first.items()} == {
        p: account.current[("vers", p)].version_id for p in ("a.txt", "b.txt", "gone.txt")}
    os.utime(root / "a.txt", ns=(10**18, 10**18))
    (root / "a.txt").write_bytes(b"two!")
    second, listing = backup(root, store, history, "run2", 5)
    assert second["a.txt"].status == "uploaded" and second["a.txt"].kept == "version"
    assert second["b.txt"].status == "unchanged" and second["b.txt"].version_id == first["b.txt"].version_id
    assert account.requests["PUT snapshot"] == 0  # the account kept the old version by itself

    runs = list_runs(history, "")
    lines = {line["p"]: line for line in read_manifest(history, runs[0].manifest) if "p" in line}
    assert lines["a.txt"]["v"] == first["a.txt"].version_id

    # mirror mode: the version keeps the deleted file; nothing goes to the attic
    (root / "gone.txt").unlink()
    listing = list_batches(str(root))
    mirrored = delete_missing(store, history, "", listing)
    assert mirrored.deleted == ["gone.txt"] and account.requests["DELETE"] == 1
    assert not [n for n in account.containers["vers-history"] if n.startswith("attic/")]

    plan = plan_run_restore(history, runs[0], store, "", 1000, 2**30)
    where = {e.path: e.where for b in plan.batches for e in b}
    # every file by the version the first run recorded (b.txt's is still the current one)
    assert where == {p: f"version:{first[p].version_id}" for p in ("a.txt", "b.txt", "gone.txt")}
    target = tmp_path / "restored"
    target.mkdir()
    for batch in plan.batches:
        result = restore_batch(str(target), list(batch), read_kept(store, history, ""))
        assert not [o for o in result if o.status == "failed"], result
    assert read_tree(target) == {"a.txt": b"one", "b.txt": b"bee", "gone.txt": b"to be deleted"}
    from urllib.parse import parse_qs

    read_versions = [parse_qs(q).get("versionid", [None])[0] for q in account.reads]
    assert first["a.txt"].version_id in read_versions and first["gone.txt"].version_id in read_versions


def test_with_versions_listed_only_the_current_version_counts_as_current(versioning_account):
    """List Blobs with include=versions marks only the current version IsCurrentVersion=true;
    the versions of a deleted blob are none of them current (the listing used to call
    every version current, so restore would have read a deleted blob as if it were there)."""
    import hashlib

    destination = Destination.checked("vers")
    store = open_store(destination)
    store.create_container()
    for data in (b"first", b"second"):
        store.put("x.txt", data, md5=hashlib.md5(data).digest(), content_type="text/plain", metadata={})
    listed = list(store.list_kept("", versions=True))
    assert [(k.current, k.size) for k in listed] == [(False, 5), (True, 6)]
    store.delete("x.txt")
    assert [k.current for k in store.list_kept("", versions=True)] == [False, False]
