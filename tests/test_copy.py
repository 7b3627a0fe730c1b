"""The copy logic on real files against the in-memory BlobStore."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from site_backup.copy import BatchResult, CopyOptions, FilePool, blob_name, copy_batch, copy_file, file_pool
from site_backup.errors import FileChangedError, is_transient
from site_backup.files import FileEntry, list_batches
from site_backup.storage import MemoryBlobStore, format_mtime, parse_mtime


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
    assert outcome.status == "uploaded" and [op for op, _ in store.requests if op != "get"] == ["put"]
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
    and stat'ed, before it is read, which is the window a live writer hits."""

    def __init__(self, path, times):
        super().__init__()
        self.path, self.times = path, times

    def get(self, name):
        if self.times:
            self.times -= 1
            with open(self.path, "ab") as f:
                f.write(b"+more")
        return super().get(name)


@pytest.mark.parametrize("block_size", [2**20, 16])
def test_file_changing_once_is_read_again(make_tree, block_size):
    root = make_tree({"log.txt": b"line\n" * 100})
    store = ChangingStore(root / "log.txt", times=1)
    [outcome] = run(root, store, single_put_size=block_size, block_size=block_size)
    assert outcome.status == "uploaded" and outcome.changed_retries == 1
    assert store.blobs["pre/log.txt"].data == (root / "log.txt").read_bytes()


@pytest.mark.parametrize("block_size", [2**20, 16])
def test_file_that_keeps_changing_fails_and_is_never_recorded(make_tree, block_size):
    root = make_tree({"log.txt": b"line\n" * 100})
    store = ChangingStore(root / "log.txt", times=5)
    [outcome] = run(root, store, single_put_size=block_size, block_size=block_size)
    assert outcome.status == "failed" and "changed while being read" in outcome.reason
    assert "pre/log.txt" not in store.blobs


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
    assert (outcome.status, outcome.transient) == ("failed", True) and "503 ServerBusy" in outcome.reason
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
    from site_backup import destination

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", destination.azurite_connection_string())
    for name in destination._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    destination._account.cache_clear()
    assert destination.open_store(destination.Destination("c")).signed is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    destination._account.cache_clear()
    assert destination.open_store(destination.Destination("c")).signed is None
    destination._account.cache_clear()


@pytest.mark.parametrize("conn_str", [
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5",
    "accountkey=a2V5;ACCOUNTNAME=acct;DefaultEndpointsProtocol=http;EndpointSuffix=core.chinacloudapi.cn",
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;",
])
def test_direct_requests_go_where_the_sdk_would(conn_str):
    from azure.storage.blob import BlobServiceClient

    from site_backup.destination import shared_key_account

    url, account, key = shared_key_account(conn_str)
    sdk = BlobServiceClient.from_connection_string(conn_str)
    assert (url, account, key) == (sdk.primary_endpoint.rstrip("/"), sdk.account_name, sdk.credential.account_key)


@pytest.mark.parametrize("conn_str", [
    "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2025&sig=x",
    "UseDevelopmentStorage=true",
    "AccountName=acct;AccountKey=not base64!",
    "AccountKey=a2V5; AccountName=acct",  # the SDK does not read " AccountName" either
    None,
])
def test_without_an_account_key_every_request_goes_through_the_sdk(conn_str):
    from site_backup.destination import shared_key_account

    assert shared_key_account(conn_str) is None


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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.accepted = 0
    if ssl_context:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_signed_requests_reuse_connections_and_replace_ones_the_server_closed():
    from site_backup.destination import StorageSettings
    from site_backup.fastblob import Connections

    server = _blob_like_server()
    try:
        connections = Connections("http", "127.0.0.1", server.server_address[1], StorageSettings())
        assert [connections.request("PUT", f"/c/{i}", b"x", {"Content-Length": "1"}).status for i in range(3)] == [201] * 3
        assert server.accepted == 1
        connections.request("PUT", "/c/close", b"x", {"Content-Length": "1"})
        time.sleep(0.2)  # the server closes the connection after answering
        assert connections.request("PUT", "/c/after", b"x", {"Content-Length": "1"}).status == 201
        assert server.accepted == 2
    finally:
        server.shutdown()
        server.server_close()


def test_signed_requests_over_https_trust_the_given_ca_bundle_only(tmp_path):
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from site_backup.destination import StorageSettings
    from site_backup.fastblob import Connections, _NotConnected

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
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
    blocker = file_pool(1).submit(0, gate.wait)  # holds the only thread while both batches queue
    threads = [threading.Thread(target=copy_batch, args=(str(root), entries(root), store, name, options))
               for name, root in (("first", first), ("second", second))]

    def queued(n):
        deadline = time.monotonic() + 10
        while file_pool(1)._queue.qsize() < n:
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
    pool = FilePool(1)
    failing = pool.submit(1, int, "not a number")
    with pytest.raises(ValueError):
        failing.result(timeout=10)
    assert pool.submit(1, len, "abc").result(timeout=10) == 3
