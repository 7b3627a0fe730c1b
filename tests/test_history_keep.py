"""Nothing overwritten is lost: a changed file's previous content is kept (snapshot, or the
account's own version) before its blob is replaced; unchanged files cost nothing."""

from __future__ import annotations

import hashlib
import os

import pytest

from flows.backup_site_content import backup_site_content
from site_backup.copy import BatchResult, CopyOptions, copy_batch
from site_backup.files import list_batches
from tests.memory_store import MemoryBlobStore


def run(root, store, **options):
    batch = [f for b in list_batches(str(root)).batches for f in b]
    return copy_batch(str(root), batch, store, "", CopyOptions(**options))


@pytest.mark.parametrize("size", [10, 3 * 2**20 + 5])  # one request, and blocks (block size 1 MiB below)
def test_changed_file_is_snapshotted_before_its_blob_is_replaced(make_tree, size):
    root = make_tree({"a.bin": os.urandom(size), "b.txt": b"keep"})
    store = MemoryBlobStore()
    run(root, store, block_size=2**20, single_put_size=2**20)
    old = (root / "a.bin").read_bytes()
    (root / "a.bin").write_bytes(os.urandom(size))
    outcomes = {o.path: o for o in run(root, store, block_size=2**20, single_put_size=2**20)}
    assert outcomes["a.bin"].kept == "snapshot" and outcomes["b.txt"].kept == ""
    assert [n for n, _ in store.snapshots] == ["a.bin"]
    kept = next(iter(store.snapshots.values()))
    assert kept.data == old and kept.content_md5 == hashlib.md5(old).digest()
    assert outcomes["a.bin"].md5 == hashlib.md5((root / "a.bin").read_bytes()).digest()
    assert BatchResult.from_outcomes(list(outcomes.values())).files_changed == 1


def test_unchanged_and_new_files_make_no_snapshot(make_tree):
    root = make_tree({"a.txt": b"a"})
    store = MemoryBlobStore()
    run(root, store)
    (root / "new.txt").write_bytes(b"new")
    os.utime(root / "a.txt", ns=(10**18, 10**18))  # new time, same content: unchanged by MD5
    run(root, store)
    assert store.snapshots == {} and not [r for r in store.requests if r[0] == "snapshot"]


def test_an_account_that_keeps_versions_is_not_snapshotted_as_well(make_tree):
    root = make_tree({"a.txt": b"one"})
    store = MemoryBlobStore(versioning=True)
    run(root, store)
    (root / "a.txt").write_bytes(b"two")
    [outcome] = run(root, store)
    assert outcome.kept == "version" and outcome.version_id
    assert not [r for r in store.requests if r[0] == "snapshot"]
    assert [blob.data for blob in store.snapshots.values()] == [b"one"]  # the version Azure kept


def test_a_file_that_fails_to_read_makes_no_snapshot(make_tree, monkeypatch):
    import site_backup.copy as copy_module
    from site_backup.errors import FileChangedError

    root = make_tree({"a.txt": b"one"})
    store = MemoryBlobStore()
    run(root, store)
    (root / "a.txt").write_bytes(b"two")

    def keeps_changing(*args, **kwargs):
        raise FileChangedError()

    monkeypatch.setattr(copy_module, "_check_unchanged", keeps_changing)
    [outcome] = run(root, store)
    assert outcome.status == "failed" and store.snapshots == {}


def test_azurite_keeps_the_previous_content_as_a_snapshot(storage, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"first", "b.txt": b"stays", "big.bin": os.urandom(9 * 2**20)})
    first = backup_site_content(str(root), container=container_name)
    assert first.files_changed == 0
    old_big = (root / "big.bin").read_bytes()
    (root / "a.txt").write_bytes(b"second")
    (root / "big.bin").write_bytes(os.urandom(9 * 2**20))
    again = backup_site_content(str(root), container=container_name)
    assert (again.files_uploaded, again.files_changed, again.files_unchanged) == (2, 2, 1)
    container = storage.container(container_name)
    listed = list(container.list_blobs(include=["snapshots"]))
    snapshots = {b.name: b for b in listed if b.snapshot}
    assert sorted(snapshots) == ["a.txt", "big.bin"]
    assert container.get_blob_client("a.txt", snapshot=snapshots["a.txt"].snapshot).download_blob().readall() \
        == b"first"
    kept_big = container.get_blob_client("big.bin", snapshot=snapshots["big.bin"].snapshot).download_blob()
    assert kept_big.readall() == old_big
    assert bytes(snapshots["big.bin"].content_settings.content_md5) == hashlib.md5(old_big).digest()
    assert container.download_blob("a.txt").readall() == b"second"
    # a plain listing (what rclone, AzCopy, verify and restore read) shows no snapshot
    assert sorted(b.name for b in container.list_blobs()) == ["a.txt", "b.txt", "big.bin"]
    third = backup_site_content(str(root), container=container_name)
    assert third.files_changed == 0 and third.bytes_uploaded == 0
    assert len([b for b in container.list_blobs(include=["snapshots"]) if b.snapshot]) == 2
