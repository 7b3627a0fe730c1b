"""The copy logic on real files against the in-memory BlobStore."""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

import site_backup.copy as copy_module
import site_backup.writeback as writeback
from site_backup.copy import BatchResult, CopyOptions, blob_name, copy_batch, copy_file
from site_backup.file_pool import FilePool, file_pool
from site_backup.in_flight import InFlightLevel
from site_backup.errors import FileChangedError, is_transient
from site_backup.files import FileEntry, list_batches
from site_backup.remote import list_destination
from site_backup.blob_metadata import format_mtime, parse_mtime
from tests.memory_store import MemoryBlobStore


def entries(root):
    return [f for batch in list_batches(str(root)).batches for f in batch]


def run(root, store, **options):
    return copy_batch(str(root), entries(root), store, "pre", CopyOptions(**options))


def by_status(outcomes):
    out = {}
    for o in outcomes:
        out.setdefault(o.status, set()).add(o.path)
    return out


def test_uploads_every_file_with_md5_type_and_mtime(make_tree):
    root = make_tree({"index.html": b"<html>hi</html>", "img/logo.png": b"\x89PNG" * 10, "empty": b""})
    store = MemoryBlobStore()
    outcomes = run(root, store)
    assert by_status(outcomes) == {"uploaded": {"index.html", "img/logo.png", "empty"}}
    blob = store.blobs["pre/index.html"]
    assert blob.data == b"<html>hi</html>" and blob.content_md5 == hashlib.md5(blob.data).digest()
    assert blob.content_type == "text/html; charset=utf-8"
    assert parse_mtime(blob.metadata["mtime"]) == os.stat(root / "index.html").st_mtime_ns
    assert store.blobs["pre/empty"].data == b"" and store.blobs["pre/img/logo.png"].content_type == "image/png"


def test_large_file_goes_up_in_blocks_with_the_whole_file_md5(make_tree):
    data = os.urandom(5 * 2**20 + 123)
    root = make_tree({"big.bin": data})
    store = MemoryBlobStore()
    [outcome] = run(root, store, single_put_size=2**20, block_size=2**20, blocks_in_flight=3)
    assert outcome.status == "uploaded" and outcome.bytes_uploaded == len(data)
    assert store.blobs["pre/big.bin"].data == data
    assert store.blobs["pre/big.bin"].content_md5 == hashlib.md5(data).digest()
    assert sum(1 for op, _ in store.requests if op == "stage") == 6 and not store.staged


def test_file_within_the_single_put_size_goes_up_in_one_request(make_tree):
    data = os.urandom(3 * 2**20)
    root = make_tree({"mid.bin": data})
    store = MemoryBlobStore()
    [outcome] = run(root, store, single_put_size=4 * 2**20, block_size=2**20)
    assert outcome.status == "uploaded" and [op for op, _ in store.requests if op not in ("get", "list")] == ["put"]
    assert store.blobs["pre/mid.bin"].content_md5 == hashlib.md5(data).digest()


def test_second_run_uploads_nothing(make_tree):
    root = make_tree({"a.txt": b"a", "b/c.txt": b"c"})
    store = MemoryBlobStore()
    run(root, store)
    again = run(root, store)
    assert by_status(again) == {"unchanged": {"a.txt", "b/c.txt"}}
    assert sum(o.bytes_uploaded for o in again) == 0


def test_same_content_with_new_mtime_is_unchanged_by_md5(make_tree):
    root = make_tree({"a.txt": b"same"})
    store = MemoryBlobStore()
    run(root, store)
    os.utime(root / "a.txt", ns=(10**18, 10**18))
    assert by_status(run(root, store)) == {"unchanged": {"a.txt"}}


def test_changed_content_is_uploaded_again(make_tree):
    root = make_tree({"a.txt": b"old", "b.txt": b"keep"})
    store = MemoryBlobStore()
    run(root, store)
    (root / "a.txt").write_bytes(b"new!")
    assert by_status(run(root, store)) == {"uploaded": {"a.txt"}, "unchanged": {"b.txt"}}
    assert store.blobs["pre/a.txt"].data == b"new!"


def test_dry_run_sends_nothing(make_tree):
    root = make_tree({"a.txt": b"a"})
    store = MemoryBlobStore()
    assert by_status(run(root, store, dry_run=True)) == {"uploaded": {"a.txt"}}
    assert store.blobs == {}


class ChangingStore(MemoryBlobStore):
    """Appends to the file each time the copy looks the blob up: after the file was opened
    and stat'ed, before it is read, which is the window a live writer hits. (A batch's
    folder listings start before any file is opened: the look-up in that window is the
    batch's RemoteLookup.get, see `lookups_change_the_file`.)"""

    def __init__(self, path, times):
        super().__init__()
        self.path, self.times = path, times

    def _append(self):
        if self.times:
            self.times -= 1
            with open(self.path, "ab") as f:
                f.write(b"+more")

    def get(self, name):
        self._append()
        return super().get(name)


@pytest.fixture
def lookups_change_the_file(monkeypatch):
    from site_backup.remote import RemoteLookup

    original = RemoteLookup.get

    def get(self, name):
        self.store._append()
        return original(self, name)

    monkeypatch.setattr(RemoteLookup, "get", get)


@pytest.mark.parametrize("block_size", [2**20, 16])
def test_file_changing_once_is_read_again(make_tree, block_size, lookups_change_the_file):
    root = make_tree({"log.txt": b"line\n" * 100})
    store = ChangingStore(root / "log.txt", times=1)
    [outcome] = run(root, store, single_put_size=block_size, block_size=block_size)
    assert outcome.status == "uploaded" and outcome.changed_retries == 1
    assert store.blobs["pre/log.txt"].data == (root / "log.txt").read_bytes()


@pytest.mark.parametrize("block_size", [2**20, 16])
def test_file_that_keeps_changing_fails_and_is_never_recorded(make_tree, block_size, lookups_change_the_file):
    root = make_tree({"log.txt": b"line\n" * 100})
    store = ChangingStore(root / "log.txt", times=5)
    [outcome] = run(root, store, single_put_size=block_size, block_size=block_size)
    assert outcome.status == "failed" and "changed while being read" in outcome.reason
    assert "pre/log.txt" not in store.blobs


class MappedWriter:
    """A writer holding a shared memory map of a file, as a database does: its first write
    dirties every page (the file's times move once); later writes to the still-dirty pages
    change the bytes without moving size, mtime or ctime."""

    def __init__(self, path, size):
        self.path = path
        self._file = open(path, "r+b")
        self.map = mmap.mmap(self._file.fileno(), size)
        self.write(0)
        self.versions = [bytes(self.map)]

    def write(self, version: int) -> None:
        self.map[:] = bytes([version]) * len(self.map)

    def rewrite_unseen(self) -> None:
        """Write the next version; check that the stat check alone cannot see it."""
        before = os.stat(self.path)
        self.write(len(self.versions))
        self.versions.append(bytes(self.map))
        after = os.stat(self.path)
        assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
            before.st_size, before.st_mtime_ns, before.st_ctime_ns), "the write through the map moved the times"

    def close(self) -> None:
        self.map.close()
        self._file.close()


@pytest.fixture
def mapped(make_tree):
    writers = []

    def make(size):
        root = make_tree({"db.bin": b"\xff" * size})
        writers.append(MappedWriter(root / "db.bin", size))
        return root, writers[-1]

    yield make
    for writer in writers:
        writer.close()


@pytest.mark.parametrize("times", [1, 5])
def test_file_rewritten_through_a_memory_map_while_read_in_one_request_is_caught(mapped, monkeypatch, times):
    # Before: the blob held the bytes of the first read, the file others; outcome "uploaded",
    # and the unchanged mtime made every later run call the stale blob "unchanged".
    root, writer = mapped(2 * 2**20)
    real_check = copy_module._check_unchanged
    rewrites = [times]

    def rewrite_then_check(f, before, bytes_read):
        if rewrites[0]:  # the first read is done; the writer goes on through its map
            rewrites[0] -= 1
            writer.rewrite_unseen()
        return real_check(f, before, bytes_read)

    monkeypatch.setattr(copy_module, "_check_unchanged", rewrite_then_check)
    store = MemoryBlobStore()
    [outcome] = run(root, store)
    if times == 1:
        assert (outcome.status, outcome.changed_retries) == ("uploaded", 1)
        assert store.blobs["pre/db.bin"].data == writer.versions[-1] == (root / "db.bin").read_bytes()
    else:
        assert outcome.status == "failed" and "changed while being read" in outcome.reason
        assert "pre/db.bin" not in store.blobs


@pytest.mark.parametrize("times", [1, 5])
def test_file_rewritten_through_a_memory_map_while_uploaded_in_blocks_is_caught(mapped, times):
    # Before: the first block of one version, the rest of the next: a blob matching no
    # version of the file, committed, outcome "uploaded".
    root, writer = mapped(3 * 2**20)
    store = MemoryBlobStore()
    real_stage = store.stage_block
    rewrites = [times]

    def stage_then_rewrite(name, block_id, data):
        real_stage(name, block_id, data)
        if rewrites[0] and data == writer.versions[-1][: len(data)]:  # once per attempt
            rewrites[0] -= 1
            writer.rewrite_unseen()

    store.stage_block = stage_then_rewrite
    [outcome] = run(root, store, single_put_size=2**20, block_size=2**20, blocks_in_flight=1)
    if times == 1:
        assert (outcome.status, outcome.changed_retries) == ("uploaded", 1)
        assert store.blobs["pre/db.bin"].data == writer.versions[-1] == (root / "db.bin").read_bytes()
        assert store.blobs["pre/db.bin"].content_md5 == hashlib.md5(writer.versions[-1]).digest()
    else:
        assert outcome.status == "failed" and "changed while being read" in outcome.reason
        assert "pre/db.bin" not in store.blobs


@pytest.mark.parametrize("size", [2 * 2**20, 3 * 2**20])
def test_only_files_changed_within_the_writeback_window_are_read_twice(make_tree, monkeypatch, size):
    root = make_tree({"a.bin": os.urandom(size)})
    second_reads = []
    for name in ("_check_reads_the_same", "_check_hashes_the_same"):
        real = getattr(copy_module, name)
        monkeypatch.setattr(copy_module, name, lambda *a, real=real: second_reads.append(1) or real(*a))
    options = dict(single_put_size=2**20, block_size=2**20) if size > 2 * 2**20 else {}
    run(root, MemoryBlobStore(), **options)
    assert second_reads == [1]  # just written: read twice
    window = writeback.writeback_window_ns()
    monkeypatch.setattr(writeback.time, "time_ns", lambda: os.stat(root / "a.bin").st_ctime_ns + window + 1)
    run(root, MemoryBlobStore(), **options)
    assert second_reads == [1]  # older than the window: read once, as before


def test_writeback_window_comes_from_the_kernel_settings():
    window = writeback.writeback_window_ns()
    with open("/proc/sys/vm/dirty_expire_centisecs") as a, open("/proc/sys/vm/dirty_writeback_centisecs") as b:
        assert window == (int(a.read()) + int(b.read())) * 10**7 + writeback._WRITEBACK_MARGIN_NS
    changed = SimpleNamespace(st_mtime_ns=10**12, st_ctime_ns=10**12)
    assert writeback.may_still_be_written(changed, now_ns=10**12 + window)
    assert not writeback.may_still_be_written(changed, now_ns=10**12 + window + 1)
    # A far-future mtime (set with touch) does not make an old file hot; a recent ctime does.
    far_mtime = SimpleNamespace(st_mtime_ns=300_000_000_000 * 10**9, st_ctime_ns=10**12)
    assert not writeback.may_still_be_written(far_mtime, now_ns=10**12 + window + 1)
    assert writeback.may_still_be_written(far_mtime, now_ns=10**12 + 1)


def test_a_file_the_flat_listing_shows_as_walked_is_neither_read_nor_handed_to_a_thread(make_tree, monkeypatch):
    # Most files of a run without checkpoints, or with --refresh: rclone's rule (size and
    # modification time as walked, against the run's listing), no request and no read.
    root = make_tree({"same.txt": b"same", "touched.txt": b"t", "gone.txt": b"g", "changed.txt": b"old",
                      "recheck.txt": b"r"})
    store = MemoryBlobStore()
    run(root, store)
    os.utime(root / "touched.txt", ns=(10**18, 10**18))  # same content, another mtime: compared by MD5
    (root / "changed.txt").write_bytes(b"new!")
    del store.blobs["pre/gone.txt"]
    listed = list_destination(store, "pre")
    opened, threads = [], {}
    real_open = copy_module._open_regular
    monkeypatch.setattr(copy_module, "_open_regular",
                        lambda path, follow: opened.append(os.path.basename(path)) or real_open(path, follow))
    outcomes = copy_batch(str(root), entries(root), store, "pre", CopyOptions(recheck=frozenset({"recheck.txt"})),
                          on_file=lambda o: threads.setdefault(o.path, threading.current_thread()), listed=listed)
    assert by_status(outcomes) == {"unchanged": {"same.txt", "touched.txt", "recheck.txt"},
                                   "uploaded": {"gone.txt", "changed.txt"}}
    assert sorted(opened) == ["changed.txt", "gone.txt", "recheck.txt", "touched.txt"]
    assert threads["same.txt"] is threading.current_thread() is not threads["touched.txt"]
    [same] = [o for o in outcomes if o.path == "same.txt"]
    assert same.md5 == hashlib.md5(b"same").digest() and same.mtime_ns == os.stat(root / "same.txt").st_mtime_ns


def test_vanished_and_special_files_are_skipped(make_tree):
    root = make_tree({"gone.txt": b"1", "pipe": b"2"})
    batch = entries(root)
    os.remove(root / "gone.txt")
    os.remove(root / "pipe")
    os.mkfifo(root / "pipe")  # replaced by a FIFO after listing: must not block
    outcomes = copy_batch(str(root), batch, MemoryBlobStore(), "", CopyOptions())
    reasons = {o.path: (o.status, o.reason) for o in outcomes}
    assert reasons["gone.txt"] == ("skipped", "vanished before it could be copied")
    assert reasons["pipe"][0] == "skipped" and "FIFO" in reasons["pipe"][1]


def test_file_replaced_by_a_link_is_not_followed(make_tree, tmp_path):
    root = make_tree({"a.txt": b"1"})
    batch = entries(root)
    (tmp_path / "secret").write_bytes(b"secret")
    os.remove(root / "a.txt")
    os.symlink(tmp_path / "secret", root / "a.txt")
    [outcome] = copy_batch(str(root), batch, MemoryBlobStore(), "", CopyOptions())
    assert outcome.status == "skipped" and "symbolic link" in outcome.reason


class FailingStore(MemoryBlobStore):
    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def put(self, name, data, **kw):
        raise self.exc


def test_storage_errors_fail_the_file_with_a_reason_and_a_retry_hint(make_tree):
    root = make_tree({"a.txt": b"1"})
    busy = HttpResponseError(message="busy")
    busy.status_code, busy.error_code = 503, "ServerBusy"
    [outcome] = run(root, FailingStore(busy))
    # Not transient for the task: the run's retry policy already tried the request again.
    assert (outcome.status, outcome.transient) == ("failed", False) and "503 ServerBusy" in outcome.reason
    bad_name = HttpResponseError(message="bad")
    bad_name.status_code, bad_name.error_code = 400, "InvalidResourceName"
    [outcome] = run(root, FailingStore(bad_name))
    assert (outcome.status, outcome.transient) == ("failed", False) and "rename the file" in outcome.reason


def test_transient_classification():
    assert is_transient(ServiceRequestError("connection refused"))
    assert is_transient(FileChangedError())
    assert not is_transient(FileNotFoundError())
    forbidden = HttpResponseError(message="no")
    forbidden.status_code = 403
    assert not is_transient(forbidden)


def test_retry_reuses_finished_files(make_tree):
    root = make_tree({"a.txt": b"a", "b.txt": b"b"})
    store = MemoryBlobStore()
    first = run(root, store)
    done = {o.path: o for o in first if o.path == "a.txt"}
    store.requests.clear()
    again = copy_batch(str(root), entries(root), store, "pre", CopyOptions(), done=done)
    assert [o.status for o in again] == ["uploaded", "unchanged"]
    assert ("get", "pre/a.txt") not in store.requests


def test_batch_result_counts_and_cached_view(make_tree):
    root = make_tree({"a.txt": b"abc", "b.txt": b"de"})
    os.symlink("a.txt", root / "l")
    result = BatchResult.from_outcomes(run(root, MemoryBlobStore()))
    assert (result.files_uploaded, result.bytes_uploaded, result.bytes_total) == (2, 5, 5)
    cached = result.as_cached()
    assert (cached.files_uploaded, cached.files_unchanged, cached.bytes_uploaded) == (0, 2, 0)


def test_blob_names_and_mtime_format():
    assert blob_name("", "a/b c.txt") == "a/b c.txt" and blob_name("p/q", "x") == "p/q/x"
    assert blob_name("p", "dir./back\\slash\x01") == "p/dir\uff0e/back\uff3cslash\u2401"
    assert blob_name("", os.fsdecode(b"caf\xe9.txt")) == "caf\u201bE9.txt"
    assert format_mtime(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert format_mtime(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert parse_mtime("2023-11-14T22:13:20.1234Z") == 1_700_000_000_123_400_000
    assert parse_mtime("garbage") is None and parse_mtime(None) is None


def _datetime_format(mtime_ns):
    """The format as the old datetime code wrote it, for years 1-9999."""
    seconds, nanos = divmod(mtime_ns, 10**9)
    stamp = (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp[:-15].zfill(4)}{stamp[-15:]}{'.' + fraction if fraction else ''}Z"


DATETIME_MIN_NS = int((datetime(1, 1, 1, tzinfo=timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc))
                      .total_seconds()) * 10**9
DATETIME_MAX_NS = DATETIME_MIN_NS + 315537897600 * 10**9 - 1  # 9999-12-31T23:59:59.999999999


def test_mtime_round_trips_for_any_value_and_matches_datetime_where_it_applies():
    rng = random.Random(11)
    edges = [0, -1, 1, 10**9 - 1, -(10**9), DATETIME_MIN_NS, DATETIME_MIN_NS - 1, DATETIME_MAX_NS,
             DATETIME_MAX_NS + 1, 300_000_000_000 * 10**9, -(2**63), 2**63 - 1, 2**80, -(2**80),
             (2**63 - 1) * 10**9 + 999_999_999, -(2**63) * 10**9]  # the kernel's 64-bit seconds
    values = edges + [rng.randrange(-(2**70), 2**70) for _ in range(20_000)]
    values += [rng.randrange(DATETIME_MIN_NS, DATETIME_MAX_NS) for _ in range(20_000)]
    values += [rng.randrange(-(10**18), 10**18) // 10**9 * 10**9 for _ in range(2_000)]  # whole seconds
    for value in values:
        text = format_mtime(value)
        assert parse_mtime(text) == value, (value, text)
        if DATETIME_MIN_NS <= value <= DATETIME_MAX_NS:
            assert text == _datetime_format(value), value
            seconds, nanos = divmod(value, 10**9)
            as_datetime = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
            assert parse_mtime(as_datetime.isoformat()) == seconds * 10**9


def test_mtime_outside_datetime_years_is_written_as_go_writes_it():
    # Go's time.Format (rclone) writes the year with at least 4 digits and a minus sign
    # before year 0, astronomical numbering (year 0 = 1 BC).
    assert format_mtime(300_000_000_000 * 10**9) == "11476-08-15T05:20:00Z"
    assert format_mtime(-62135596801 * 10**9) == "0000-12-31T23:59:59Z"
    assert format_mtime(-70_000_000_000 * 10**9 + 5) == "-0249-10-15T19:33:20.000000005Z"
    assert format_mtime(-1) == "1969-12-31T23:59:59.999999999Z"


def test_mtime_parses_what_rclone_writes_and_refuses_what_is_not_a_time():
    # rclone writes a fixed 9-digit fraction ("2006-01-02T15:04:05.000000000Z07:00").
    assert parse_mtime("2023-11-14T22:13:20.123000000Z") == 1_700_000_000_123_000_000
    assert parse_mtime("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000
    assert parse_mtime("2023-11-14T17:43:20-04:30") == 1_700_000_000 * 10**9
    assert parse_mtime("2023-11-14T22:13:20.1234567891Z") == 1_700_000_000_123_456_789
    assert parse_mtime("2024-02-29T00:00:00Z") is not None
    for bad in (None, "", "garbage", "2023-02-29T00:00:00Z", "2023-13-01T00:00:00Z", "2023-11-14T24:00:00Z",
                "2023-11-14 22:13:20Z", "2023-11-14T22:13:20", "2023-11-14T22:13:20.Z", "9" * 100, "٢٠٢٣-11-14T22:13:20Z"):
        assert parse_mtime(bad) is None, bad


def test_copy_file_reports_unreadable_file(make_tree, monkeypatch):
    root = make_tree({"a.txt": b"1"})
    real_open = os.open

    def deny(path, flags, *a):
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", deny)
    outcome = copy_file(str(root), FileEntry("a.txt", 1, 0), MemoryBlobStore(), "", CopyOptions())
    assert (outcome.status, outcome.reason, outcome.transient) == ("failed", "Permission denied", False)


class LosingCommitStore(MemoryBlobStore):
    """Like Azure when another upload of the same blob committed first: our staged blocks
    are gone and the commit fails with InvalidBlockList, but the blob is there."""

    def __init__(self):
        super().__init__()
        self.lost = False

    def commit_blocks(self, name, block_ids, **kw):
        if not self.lost:
            self.lost = True
            super().commit_blocks(name, block_ids, **kw)  # the other run's identical upload
            err = HttpResponseError(message="InvalidBlockList")
            err.status_code, err.error_code = 400, "InvalidBlockList"
            raise err
        super().commit_blocks(name, block_ids, **kw)


def test_losing_the_commit_race_to_another_run_is_not_a_failure(make_tree):
    root = make_tree({"big.bin": os.urandom(100)})
    store = LosingCommitStore()
    [outcome] = run(root, store, single_put_size=16, block_size=16)
    assert outcome.status == "unchanged" and store.blobs["pre/big.bin"].data == (root / "big.bin").read_bytes()


def test_direct_signed_path_is_used_with_an_account_key_and_not_behind_a_proxy(monkeypatch):
    from site_backup import accounts
    from site_backup.credentials import azurite_connection_string
    from site_backup.destination import Destination

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string())
    for name in accounts._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    accounts._account.cache_clear()
    assert accounts.open_store(Destination("c")).signed is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    accounts._account.cache_clear()
    assert accounts.open_store(Destination("c")).signed is None
    accounts._account.cache_clear()


@pytest.mark.parametrize("conn_str", [
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5",
    "accountkey=a2V5;ACCOUNTNAME=acct;DefaultEndpointsProtocol=http;EndpointSuffix=core.chinacloudapi.cn",
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;",
])
def test_direct_requests_go_where_the_sdk_would(conn_str):
    from azure.storage.blob import BlobServiceClient

    from site_backup.credentials import shared_key_account

    url, account, key = shared_key_account(conn_str)
    sdk = BlobServiceClient.from_connection_string(conn_str)
    assert (url, account, key) == (sdk.primary_endpoint.rstrip("/"), sdk.account_name, sdk.credential.account_key)


@pytest.mark.parametrize("conn_str", [
    "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2025&sig=x",
    "AccountName=acct;SharedAccessSignature=sv=2025&sig=x;DefaultEndpointsProtocol=https",
])
def test_a_sas_connection_string_takes_the_direct_path_where_the_sdk_would_go(conn_str):
    from azure.storage.blob import BlobServiceClient

    from site_backup.accounts import direct_access
    from site_backup.fastblob import Sas

    url, auth = direct_access(conn_str, None, None)
    sdk = BlobServiceClient.from_connection_string(conn_str)
    assert isinstance(auth, Sas) and auth.query == "sv=2025&sig=x"
    assert url == sdk.primary_endpoint.split("?")[0].rstrip("/")


def test_account_urls_take_the_direct_path_with_a_sas_or_a_token_credential():
    from site_backup.accounts import direct_access
    from site_backup.fastblob import Bearer, Sas

    url, auth = direct_access(None, "https://acct.blob.core.windows.net/?sv=2025&sig=x", None)
    assert (url, type(auth), auth.query) == ("https://acct.blob.core.windows.net", Sas, "sv=2025&sig=x")
    url, auth = direct_access(None, "https://acct.blob.core.windows.net", FakeTokenCredential())
    assert (url, type(auth)) == ("https://acct.blob.core.windows.net", Bearer)
    with pytest.raises(ValueError, match="only sent over https"):
        direct_access(None, "http://127.0.0.1:10000/acct", FakeTokenCredential())


@pytest.mark.parametrize("conn_str", [
    "UseDevelopmentStorage=true",
    "AccountKey=a2V5; AccountName=acct",  # the SDK does not read " AccountName" either
    None,
])
def test_settings_only_the_sdk_understands_go_through_the_sdk(conn_str):
    from site_backup.accounts import direct_access

    assert direct_access(conn_str, None, None) is None


class FakeTokenCredential:
    """An azure-identity-like credential that counts the tokens it hands out."""

    def __init__(self, lifetime: float = 3600):
        self.lifetime, self.calls = lifetime, 0

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(f"token-{self.calls}", int(time.time() + self.lifetime))


def test_bearer_tokens_are_cached_and_fetched_again_before_they_expire():
    from site_backup.fastblob import Bearer

    lasting, short = FakeTokenCredential(3600), FakeTokenCredential(200)
    assert [Bearer(lasting).token() for _ in range(1)] == ["token-1"]
    bearer = Bearer(lasting)
    assert {bearer.token() for _ in range(50)} == {"token-2"} and lasting.calls == 2
    expiring = Bearer(short)  # expires within the five-minute margin: fetched every time
    assert [expiring.token(), expiring.token()] == ["token-1", "token-2"]


def _sdk_authorization(method, url, headers):
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest
    from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

    from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY

    request = PipelineRequest(HttpRequest(method, url, headers=dict(headers)), PipelineContext(None))
    SharedKeyCredentialPolicy(AZURITE_ACCOUNT, AZURITE_KEY).on_request(request)
    return request.http_request.headers["Authorization"]


def test_shared_key_signatures_equal_the_sdks_on_generated_requests():
    # The SDK is the oracle: names with unicode, spaces, %#?&+;, long names; metadata keys
    # mixing letters, digits and '_' (the service sorts them in its own collation).
    import random
    from urllib.parse import quote

    from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY
    from site_backup.fastblob import SharedKey

    rnd = random.Random(7)
    alphabet = "abcXYZ019 %#?&+;=~!'()*,-._/é日本 ☃"
    key_alphabet = "abcdefXYZ0123456789_"
    ours = SharedKey(AZURITE_ACCOUNT, AZURITE_KEY)
    for _ in range(500):
        name = "".join(rnd.choice(alphabet) for _ in range(rnd.choice([1, 5, 30, 300])))
        path = f"/devstoreaccount1/c/{quote(name, safe='~/')}"
        metadata = {"x-ms-meta-" + rnd.choice("abcXY_") + "".join(rnd.choice(key_alphabet) for _ in range(rnd.randint(0, 6))):
                    "v" for _ in range(rnd.randint(0, 5))}
        headers = {"x-ms-date": "Sat, 28 Nov 2026 21:00:00 GMT", "x-ms-version": "2025-11-05",
                   "x-ms-client-request-id": "id", "x-ms-blob-type": "BlockBlob", "Content-Length": str(rnd.randint(0, 9)),
                   "Content-MD5": "bWQ1", "x-ms-blob-content-type": "text/plain; charset=utf-8", **metadata}
        query = rnd.choice([{}, {"comp": "block", "blockid": "YWJj+/=="}, {"comp": "blocklist"},
                            {"restype": "container", "comp": "list", "prefix": name, "marker": "m+1 /"}])
        url = "http://127.0.0.1:10000" + path + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
                                                 if query else "")
        method = rnd.choice(["PUT", "GET", "HEAD"])
        signed = dict(headers)
        ours.authorize(method, path, signed, query)
        assert signed["Authorization"] == _sdk_authorization(method, url, headers), (name, metadata, query)


def test_an_account_key_that_is_not_base64_is_named_not_sent():
    from site_backup.credentials import shared_key_account

    with pytest.raises(ValueError, match="account key is not valid base64") as info:
        shared_key_account("AccountName=acct;AccountKey=not base64!")
    assert "not base64!" not in str(info.value)


def test_signed_request_errors_are_the_sdk_kinds():
    from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError

    from site_backup.errors import describe, is_transient
    from site_backup.fastblob import _error

    busy = _error(503, "ServerBusy", b"")
    assert is_transient(busy) and describe(busy) == "storage answered 503 ServerBusy"
    denied = _error(403, "AuthenticationFailed", b"")
    assert isinstance(denied, ClientAuthenticationError) and not is_transient(denied)
    assert isinstance(_error(404, "ContainerNotFound", b""), ResourceNotFoundError)


def _blob_like_server(ssl_context=None):
    """A local HTTP/1.1 server answering PUT with 201; counts accepted connections."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            server.accepted += 1
            super().setup()

        def do_PUT(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()
            # Like a keep-alive timeout: close without saying so in the response.
            self.close_connection = self.path.endswith("/close")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        closed = threading.Semaphore(0)  # released once a connection is closed

        def shutdown_request(self, request):
            super().shutdown_request(request)
            self.closed.release()

    server = Server(("127.0.0.1", 0), Handler)
    server.accepted = 0
    if ssl_context:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_signed_requests_reuse_connections_and_replace_ones_the_server_closed():
    from site_backup.accounts import StorageSettings
    from site_backup.fastblob import Connections

    server = _blob_like_server()
    try:
        connections = Connections("http", "127.0.0.1", server.server_address[1], StorageSettings())
        assert [connections.request("PUT", f"/c/{i}", b"x", {"Content-Length": "1"}).status for i in range(3)] == [201] * 3
        assert server.accepted == 1
        connections.request("PUT", "/c/close", b"x", {"Content-Length": "1"})
        assert server.closed.acquire(timeout=10)  # the server closed the connection after answering
        assert connections.request("PUT", "/c/after", b"x", {"Content-Length": "1"}).status == 201
        assert server.accepted == 2
    finally:
        server.shutdown()
        server.server_close()


def test_signed_requests_over_https_trust_the_given_ca_bundle_only(tmp_path):
    import ssl

    from site_backup.accounts import StorageSettings
    from site_backup.fastblob import Connections, _NotConnected
    from tests.azurite_auth import self_signed_certificate

    self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = _blob_like_server(context)
    try:
        port = server.server_address[1]
        trusted = Connections("https", "127.0.0.1", port, StorageSettings(), ca_bundle=str(tmp_path / "cert.pem"))
        assert trusted.request("PUT", "/c/a", b"x", {"Content-Length": "1"}).status == 201
        untrusted = Connections("https", "127.0.0.1", port, StorageSettings())
        with pytest.raises(_NotConnected, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.request("PUT", "/c/a", b"x", {"Content-Length": "1"})
    finally:
        server.shutdown()
        server.server_close()


def test_outcomes_follow_the_batch_order_though_large_files_start_first(make_tree):
    files = {"a.txt": b"a", "b.bin": os.urandom(50_000), "c.txt": b"cc", "d.bin": os.urandom(70_000)}
    root = make_tree(files)
    store = MemoryBlobStore()
    batch = entries(root)
    outcomes = copy_batch(str(root), batch, store, "pre", CopyOptions(check_remote=False, files_in_flight=1))
    assert [o.path for o in outcomes] == [f.path for f in batch]
    assert [name for op, name in store.requests] == ["pre/d.bin", "pre/b.bin", "pre/c.txt", "pre/a.txt"]


def test_large_files_start_first_whichever_batch_queued_them_small_ones_keep_batch_order(make_tree):
    store, gate = MemoryBlobStore(), threading.Event()
    options = CopyOptions(check_remote=False, files_in_flight=1, block_size=1000)
    first = make_tree({"a1.txt": b"1", "a3.txt": b"333", "a2.txt": b"22"}, "first")
    second = make_tree({"b-big.bin": b"x" * 5000, "b1.txt": b"1", "b-bigger.bin": b"y" * 9000}, "second")
    blocker = file_pool(1, 1000).submit(0, gate.wait)  # holds the only thread while both batches queue
    threads = [threading.Thread(target=copy_batch, args=(str(root), entries(root), store, name, options))
               for name, root in (("first", first), ("second", second))]

    def queued(n):
        deadline = time.monotonic() + 10
        while file_pool(1, 1000).queued() < n:
            assert time.monotonic() < deadline, "the batch did not queue its files"
            time.sleep(0.001)

    threads[0].start()
    queued(3)  # the first batch queued all its files before the second starts
    threads[1].start()
    queued(6)
    gate.set()
    for thread in threads:
        thread.join(10)
    blocker.result(timeout=10)
    assert [name for op, name in store.requests] == [
        "second/b-bigger.bin", "second/b-big.bin", "first/a3.txt", "first/a2.txt", "first/a1.txt", "second/b1.txt"]


def test_the_file_pool_hands_errors_to_the_submitter_and_keeps_working():
    pool = FilePool(InFlightLevel(1), 1000)
    failing = pool.submit(1, int, "not a number")
    with pytest.raises(ValueError):
        failing.result(timeout=10)
    assert pool.submit(1, len, "abc").result(timeout=10) == 3


def _listing_server(pages: dict[str, bytes]):
    """A local server answering List Blobs with the page for each marker; records the requests."""
    from urllib.parse import parse_qs, urlsplit

    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            server.requests.append((self.path, dict(self.headers)))
            body = pages[parse_qs(urlsplit(self.path).query).get("marker", [""])[0]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_listing_follows_next_marker_past_short_and_empty_pages():
    from site_backup.accounts import StorageSettings
    from site_backup.fastblob import DirectBlobs, Sas
    from site_backup.storage import RetryLog

    pages = {"": b"<EnumerationResults><Blobs/><NextMarker>m 1</NextMarker></EnumerationResults>",
             "m 1": b"<EnumerationResults><Blobs><Blob><Name Encoded=\"true\">a%01b</Name><Properties><Content-Length>3"
             b"</Content-Length><Content-MD5>bWQ1</Content-MD5></Properties><Metadata><mtime>t</mtime></Metadata>"
             b"</Blob></Blobs><NextMarker>m2</NextMarker></EnumerationResults>",
             "m2": b"<EnumerationResults><Blobs><Blob><Name>c</Name><Properties><Content-Length>0</Content-Length>"
             b"</Properties></Blob></Blobs><NextMarker/></EnumerationResults>"}
    server = _listing_server(pages)
    try:
        blobs = DirectBlobs(f"http://127.0.0.1:{server.server_address[1]}/acct", Sas("?sv=1&sig=s"), "2025-11-05",
                            StorageSettings())
        assert blobs.first_blob("c", "p/", RetryLog()) == "a\x01b"
        listed = list(blobs.list_blobs("c", "p/", RetryLog()))
        assert [(b.name, b.size, b.content_md5, b.metadata) for b in listed] == [
            ("a\x01b", 3, b"md5", {"mtime": "t"}), ("c", 0, None, {})]
        path, headers = server.requests[-1]
        assert "marker=m2" in path and path.endswith("&sv=1&sig=s") and "marker=m%201" in server.requests[-2][0]
        assert headers["User-Agent"].startswith("site-backup/") and len(headers["x-ms-client-request-id"]) == 36
    finally:
        server.shutdown()
        server.server_close()


def test_idle_connections_work_with_descriptors_above_1024():
    import resource

    from site_backup.accounts import StorageSettings
    from site_backup.fastblob import Connections

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # push new sockets above 1024
    server = _blob_like_server()
    try:
        connections = Connections("http", "127.0.0.1", server.server_address[1], StorageSettings())
        for i in range(3):
            assert connections.request("PUT", f"/c/{i}", b"x", {"Content-Length": "1"}).status == 201
        assert connections.idle[0].sock.fileno() >= 1024 and server.accepted == 1
    finally:
        for fd in held:
            os.close(fd)
        server.shutdown()
        server.server_close()


def test_a_batch_learns_what_is_stored_from_one_listing_per_folder(make_tree):
    files = {f"d{i % 3}/f{i:03d}.txt": f"file {i}".encode() for i in range(300)}
    root = make_tree(files)
    store = MemoryBlobStore()
    run(root, store)
    store.requests.clear()
    outcomes = run(root, store)
    assert by_status(outcomes) == {"unchanged": set(files)}
    assert sorted(store.requests) == [("list", "pre/d0/f"), ("list", "pre/d1/f"), ("list", "pre/d2/f")]


def test_a_folder_far_larger_than_the_batch_falls_back_to_one_request_per_file(make_tree):
    from site_backup.remote import PAGE, RemoteLookup

    store = MemoryBlobStore()
    for i in range(2 * PAGE):
        store.put(f"big/{i:05d}", b"x", md5=hashlib.md5(b"x").digest(), content_type="", metadata={})
    store.requests.clear()
    lookup = RemoteLookup(store, ["big/00007", "big/09999", "big/none"])
    assert lookup.get("big/00007").size == 1 and lookup.get("big/09999").size == 1 and lookup.get("big/none") is None
    # One listing cut short after a page's worth of names, then a request each for the rest.
    assert store.requests == [("list", "big/"), ("get", "big/09999"), ("get", "big/none")]


def test_a_failed_listing_fails_the_files_of_that_folder_only(make_tree):
    root = make_tree({"ok/a.txt": b"a", "bad/b.txt": b"b"})
    store = MemoryBlobStore()
    run(root, store)

    class Failing(MemoryBlobStore):
        def list_folder(self, prefix):
            if prefix.startswith("pre/bad/"):
                raise HttpResponseError(message="503 ServerBusy")
            return super().list_folder(prefix)

    failing = Failing(blobs=dict(store.blobs))
    outcomes = {o.path: o.status for o in run(root, failing)}
    assert outcomes == {"ok/a.txt": "unchanged", "bad/b.txt": "failed"}


def test_a_batch_lists_its_folders_at_once_not_one_after_another(make_tree):
    files = {f"d{i:02d}/f.txt": b"x" for i in range(12)}
    root = make_tree(files)
    store = MemoryBlobStore()
    run(root, store)

    class SlowListing(MemoryBlobStore):
        def __init__(self, blobs):
            super().__init__(blobs=blobs)
            self.in_flight = self.most = 0

        def list_folder(self, prefix):
            with self._lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            time.sleep(0.1)
            with self._lock:
                self.in_flight -= 1
            return super().list_folder(prefix)

    slow = SlowListing(dict(store.blobs))
    assert by_status(run(root, slow, files_in_flight=1)) == {"unchanged": set(files)}
    assert slow.most == 8  # 12 listings, 8 at a time
