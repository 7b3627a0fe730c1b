"""Confirming checkpoints against a listing (site_backup/confirm.py) and copying the files
that failed it by content, on the in-memory store."""

from __future__ import annotations

import hashlib
import os

from dataclasses import replace

import pytest

from site_backup import ahead, destination, remote
from site_backup.errors import ConfigurationError
from site_backup.retry import RetryPolicy
from site_backup.confirm import holds, unconfirmed
from site_backup.copy import CopyOptions, copy_batch
from site_backup.files import FileEntry, list_batches
from site_backup.blob_metadata import format_mtime
from site_backup.storage import RemoteBlob
from tests.memory_store import MemoryBlobStore, StoredBlob


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def stored(data: bytes, mtime_ns: int = 0, content_md5: bytes | None = None) -> StoredBlob:
    return StoredBlob(data, content_md5 if content_md5 is not None else md5(data), "text/plain",
                      {"mtime": format_mtime(mtime_ns)})


def claim(files: dict[str, bytes]):
    """A batch and the entries its checkpoint recorded."""
    batch = [FileEntry(path, len(data), 0) for path, data in files.items()]
    return batch, [(path, len(data), md5(data), 0, None) for path, data in files.items()]


def test_holds_only_the_recorded_size_and_md5():
    assert holds(RemoteBlob(3, md5(b"abc"), None), 3, md5(b"abc"))
    assert not holds(None, 3, md5(b"abc"))
    assert not holds(RemoteBlob(4, md5(b"abc"), None), 3, md5(b"abc"))
    assert not holds(RemoteBlob(3, md5(b"xyz"), None), 3, md5(b"abc"))
    assert not holds(RemoteBlob(3, None, None), 3, md5(b"abc"))
    assert not holds(RemoteBlob(3, md5(b"abc"), None, folder=True), 3, md5(b"abc"))


def test_unconfirmed_names_missing_resized_and_replaced_blobs_per_batch():
    one = {"a.txt": b"aaa", "sub/b.txt": b"bb", "sub/c.txt": b"c"}
    two = {"sub/d.txt": b"dddd", "e.txt": b"eeeee", "f.txt": b"ff"}
    store = MemoryBlobStore(blobs={f"pre/{p}": stored(d) for p, d in {**one, **two}.items()})
    assert unconfirmed(store, "pre", [claim(one), claim(two)]) == [frozenset(), frozenset()]

    del store.blobs["pre/sub/b.txt"]  # deleted behind the checkpoint's back
    store.blobs["pre/e.txt"] = stored(b"EEEEE")  # replaced: same size, other content
    store.blobs["pre/f.txt"] = stored(b"fff")  # replaced: other size
    assert unconfirmed(store, "pre", [claim(one), claim(two)]) == [frozenset({"sub/b.txt"}),
                                                                   frozenset({"e.txt", "f.txt"})]


def test_one_listing_per_folder_for_the_whole_group():
    files = [{f"d{d}/f{i}.txt": b"x" * i for i in range(5)} for d in range(3)]
    halves = [{k: v for k, v in f.items() if int(k[-5]) % 2 == parity} for f in files for parity in (0, 1)]
    store = MemoryBlobStore(blobs={f"pre/{p}": stored(d) for f in files for p, d in f.items()})
    assert unconfirmed(store, "pre", [claim(h) for h in halves]) == [frozenset()] * 6
    assert sorted(store.requests) == [("list", "pre/d0/f"), ("list", "pre/d1/f"), ("list", "pre/d2/f")]


def test_the_runs_listing_of_the_destination_answers_every_claim_with_no_further_request(monkeypatch):
    one = {"a.txt": b"aaa", "sub/b.txt": b"bb", "sub/deeper/c.txt": b"c"}
    two = {"x/d.txt": b"dddd", "x/e.txt": b"eeeee"}
    store = MemoryBlobStore(blobs={f"pre/{p}": stored(d) for p, d in {**one, **two}.items()})
    store.blobs["prefix-of-another/a.txt"] = stored(b"aaa")  # not under pre/: not listed
    del store.blobs["pre/sub/b.txt"]
    store.blobs["pre/x/e.txt"] = stored(b"EEEEE")
    listed = remote.list_destination(store, "pre/")
    assert sorted(listed) == ["pre/a.txt", "pre/sub/deeper/c.txt", "pre/x/d.txt", "pre/x/e.txt"]
    assert store.requests == [("list", "pre/")]  # one flat listing
    assert unconfirmed(store, "pre", [claim(one), claim(two)], listed) == [frozenset({"sub/b.txt"}),
                                                                           frozenset({"x/e.txt"})]
    assert store.requests == [("list", "pre/")]

    monkeypatch.setattr(remote, "LISTED_AT_MOST", 3)  # more blobs than a run keeps: list per folder instead
    assert remote.list_destination(store, "pre/") is None


def test_a_checkpoint_without_entries_confirms_nothing():
    store = MemoryBlobStore(blobs={"a.txt": stored(b"a")})
    batch = [FileEntry("a.txt", 1, 0), FileEntry("b.txt", 1, 0)]
    assert unconfirmed(store, "", [(batch, None)]) == [frozenset({"a.txt", "b.txt"})]


def test_a_file_to_recheck_is_compared_by_content_even_when_the_stored_mtime_matches(make_tree):
    root = make_tree({"a.txt": b"mine", "b.txt": b"also"})
    batch = [f for b in list_batches(str(root)).batches for f in b]
    mtime = {f.path: f.mtime_ns for f in batch}
    # Another tool wrote other content of the same size and copied the mtime metadata.
    store = MemoryBlobStore(blobs={"a.txt": stored(b"MINE", mtime["a.txt"]), "b.txt": stored(b"also", mtime["b.txt"])})
    by_mtime = copy_batch(str(root), batch, store, "", CopyOptions())
    assert [o.status for o in by_mtime] == ["unchanged", "unchanged"]  # what the stored time alone says

    outcomes = copy_batch(str(root), batch, store, "", CopyOptions(recheck=frozenset({"a.txt", "b.txt"})))
    assert {o.path: (o.status, o.kept) for o in outcomes} == {"a.txt": ("uploaded", "snapshot"),
                                                             "b.txt": ("unchanged", "")}
    assert store.blobs["a.txt"].data == b"mine"
    assert [blob.data for blob in store.snapshots.values()] == [b"MINE"]
    assert os.path.exists(root / "a.txt")


def test_a_slice_of_a_flat_folder_of_100000_blobs_costs_a_few_listings_not_a_request_per_file():
    from site_backup.remote import PAGE

    names = sorted(hashlib.sha1(str(i).encode()).hexdigest() for i in range(100_000))
    blob = stored(b"x")
    store = MemoryBlobStore(blobs=dict.fromkeys((f"flat/{n}" for n in names), blob))
    pages = []
    listing = store.list_folder

    def list_folder(prefix):  # counts the pages a real listing of 5,000 names each would take
        count = 0
        try:
            for count, item in enumerate(listing(prefix), 1):
                yield item
        finally:  # also when the reader stops early
            pages.append(-(-count // PAGE) if count else 1)

    store.list_folder = list_folder
    middle = next(i for i, n in enumerate(names) if n >= "8") - 500  # names that share no first letter
    for start in (0, middle, 99_000):  # the first, a middle and the last batch of the folder
        files = {n: b"x" for n in names[start:start + 1000]}
        batch, entries = claim(files)
        entries = [(f"flat/{p}", s, m, t, v) for p, s, m, t, v in entries]
        batch = [FileEntry(f"flat/{f.path}", f.size, 0) for f in batch]
        store.requests.clear()
        pages.clear()
        assert unconfirmed(store, "", [(batch, entries)]) == [frozenset()]
        assert not [r for r in store.requests if r[0] == "get"] and sum(pages) <= 8, (start, pages)


def test_a_listing_started_ahead_is_taken_once_and_only_for_its_own_destination():
    store = MemoryBlobStore()
    store.blobs["site/a.html"] = stored(b"a")
    store.blobs["other/b.html"] = stored(b"b")
    remote.list_ahead(store, "https://acct", "c", "site/")
    assert remote.listed_ahead("https://acct", "c", "other/") is None  # another folder
    assert remote.listed_ahead("https://other", "c", "site/") is None  # another account
    taken = remote.listed_ahead("https://acct", "c", "site/")
    assert set(taken.result(timeout=30)) == {"site/a.html"}
    assert remote.listed_ahead("https://acct", "c", "site/") is None  # a later run lists for itself


def test_listings_started_ahead_and_never_taken_are_forgotten():
    remote.list_ahead(MemoryBlobStore(), "https://acct", "c", "")
    ahead.forget()
    assert remote.listed_ahead("https://acct", "c", "") is None


def test_a_storage_check_started_ahead_answers_the_run_once_and_a_failed_one_is_asked_again(monkeypatch):
    asked = []
    monkeypatch.setattr(destination, "prepare", lambda d, create=True, policy=None: asked.append(d) or (d, True))
    site, policy = destination.Destination.checked("cont", "site"), RetryPolicy(3, 9.0)
    answer = (replace(site, account_url="https://acct", generation="0x1"), False)
    destination.prepare_ahead(site, policy).result(timeout=30)
    monkeypatch.setattr(destination, "prepare", lambda d, create=True, policy=None: asked.append(d) or answer)
    assert destination.prepared(destination.Destination.checked("cont", "other"), True, policy) == answer
    assert destination.prepared(site, True, RetryPolicy(4, 9.0)) == answer  # another policy: asked again
    assert len(asked) == 3
    assert destination.prepared(site, True, policy) == (site, True)  # the one started ahead, taken
    assert destination.prepared(site, True, policy) == answer and len(asked) == 4  # once: asked again

    def unanswered(d, create=True, policy=None):
        raise ConnectionResetError("the connection was dropped")

    monkeypatch.setattr(destination, "prepare", unanswered)
    failed = destination.prepare_ahead(site, policy)
    assert failed.exception(timeout=30) is not None
    monkeypatch.setattr(destination, "prepare", lambda d, create=True, policy=None: answer)
    assert destination.prepared(site, True, policy) == answer

    def misconfigured(d, create=True, policy=None):
        raise ConfigurationError("the account key is not valid base64: copy it again")

    monkeypatch.setattr(destination, "prepare", misconfigured)
    destination.prepare_ahead(site, policy).exception(timeout=30)
    monkeypatch.setattr(destination, "prepare", lambda d, create=True, policy=None: answer)
    with pytest.raises(ConfigurationError, match="not valid base64"):
        destination.prepared(site, True, policy)  # the same mistake, not asked again
