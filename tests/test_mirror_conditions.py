"""Mirror mode against another writer, on a real Azurite: every delete and the attic copy of
the current content are conditional on the ETag the run listed (If-Match,
x-ms-source-if-match), on the direct signed requests and on the SDK's, in every sign-in
mode; the signed requests are checked against the SDK's as an oracle."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from flows.backup_site_content import backup_site_content
from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY, azurite_connection_string
from site_backup.history import history_container
from site_backup.mirror import attic_folder, remove_keeping_history
from tests.conftest import read_container
from tests.faultproxy import FaultProxy

ODD_NAMES = ["plain.txt", "dir/ü ñ %#?&+;=~!'()*,-._/é.bin", "x//y", "日本/語 file"]
ETAG = "0x8DCAFE0123456789"


def recording_server(status: int, headers: dict[str, str]):
    """A stand-in for the Blob service on 127.0.0.1: answers every PUT and DELETE with
    `status` and `headers`, and keeps (method, path, query, headers) of each request."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            parts = urlsplit(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        do_PUT = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _sas() -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
                                AccountSasPermissions(read=True, write=True, list=True, create=True, add=True,
                                                      delete=True),
                                expiry=datetime.now(timezone.utc) + timedelta(hours=1))


@pytest.mark.parametrize("mode", ["key", "sas"])
def test_conditional_delete_and_copy_requests_equal_the_sdks(mode):
    from azure.core import MatchConditions

    from site_backup.storage import RetryLog

    # As the Blob service answers a successful Delete Blob or Copy Blob.
    server, seen = recording_server(202, {"x-ms-copy-status": "success",
                                          "x-ms-copy-id": "00000000-0000-0000-0000-000000000000"})
    try:
        ours, sdk = direct_and_sdk(server, mode)
        relevant = ("if-match", "x-ms-delete-snapshots", "x-ms-source-if-match", "x-ms-copy-source",
                    "x-ms-lease-id")
        for name in ODD_NAMES:
            for snapshot in (None, "2026-12-02T15:00:00.1234567Z"):
                assert _same_url(ours.url("c", name, snapshot), sdk.get_blob_client(name, snapshot=snapshot).url)
            source = ours.url("c", "src/" + name)
            seen.clear()
            sdk.delete_blob(name, delete_snapshots="include", etag=ETAG, match_condition=MatchConditions.IfNotModified)
            ours.delete("c", name, RetryLog(), if_match=ETAG, snapshots=True)
            sdk.get_blob_client(name).start_copy_from_url(source, source_etag=ETAG,
                                                          source_match_condition=MatchConditions.IfNotModified)
            assert ours.copy("c", name, source, RetryLog(), source_if_match=ETAG) == "success"
            sdk.delete_blob(name, etag=ETAG, match_condition=MatchConditions.IfNotModified)
            ours.delete("c", name, RetryLog(), if_match=ETAG)
            assert len(seen) == 6
            for (theirs, mine) in (seen[0:2], seen[2:4], seen[4:6]):
                assert theirs[:3] == mine[:3], (name, theirs[:3], mine[:3])
                assert {k: v for k, v in theirs[3].items() if k in relevant} == \
                       {k: v for k, v in mine[3].items() if k in relevant}, name
                if mode == "key":  # the signature covers If-Match and the x-ms- headers: the SDK signs ours alike
                    assert mine[3]["authorization"] == sdk_signature(server, mine), name
    finally:
        server.shutdown()
        server.server_close()


def direct_and_sdk(server, mode: str):
    """Our direct requests and the SDK's client of container "c", both sending to the
    recording `server`, signed in with the account key (`mode` "key") or a SAS."""
    from azure.storage.blob import BlobServiceClient

    from site_backup.accounts import StorageSettings, direct_access
    from site_backup.fastblob import DirectBlobs

    endpoint = f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1"
    conn = (azurite_connection_string(endpoint) if mode == "key"
            else f"BlobEndpoint={endpoint};SharedAccessSignature={_sas()}")
    url, auth = direct_access(conn, None, None)
    return (DirectBlobs(url, auth, "2025-11-05", StorageSettings()),
            BlobServiceClient.from_connection_string(conn).get_container_client("c"))


def sdk_signature(server, request) -> str:
    """The Shared Key signature the SDK computes for one recorded request of ours."""
    from tests.test_copy import _sdk_authorization

    method, path, query, headers = request
    target = f"http://127.0.0.1:{server.server_address[1]}{path}" + (
        "?" + "&".join(f"{k}={v[0]}" for k, v in query.items()) if query else "")
    return _sdk_authorization(method, target, {k: v for k, v in headers.items() if k != "authorization"})


def _same_url(ours: str, sdk: str) -> bool:
    """The same URL; the SDK re-encodes a SAS's values (`:` as %3A), which is the same query."""
    a, b = urlsplit(ours), urlsplit(sdk)
    return a[:3] == b[:3] and parse_qs(a.query) == parse_qs(b.query)


@pytest.fixture(params=["key", "sas", "entra"])
def signed_in(request, azurite, monkeypatch):
    """The flows' storage settings in each sign-in mode; yields (mode, read a container)."""
    from site_backup.accounts import _account

    if request.param == "entra":
        url, cert = request.getfixturevalue("azurite_oauth")
        request.getfixturevalue("entra_storage")
        from tests.conftest import read_with_token

        yield "entra", lambda name: read_with_token(url, cert, name)
        return
    connection = azurite.connection_string if request.param == "key" else \
        f"BlobEndpoint={azurite.blob_url};SharedAccessSignature={_sas()}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    _account.cache_clear()
    yield request.param, lambda name: read_container(azurite, name)
    _account.cache_clear()


def put(store, name: str, data: bytes) -> None:
    store.put(name, data, md5=hashlib.md5(data).digest(), content_type="text/plain", metadata={})


@pytest.mark.parametrize("path", ["direct", "sdk"])
def test_a_blob_rewritten_after_the_listing_is_kept_in_every_sign_in_mode(signed_in, path, monkeypatch,
                                                                          container_name):
    """Another writer's upload lands between this run's listing and its deletion: the copy
    to the attic answers 412 and the blob stays; one left alone is copied and deleted."""
    from site_backup.accounts import _account, open_store, storage_account
    from site_backup.destination import Destination
    from site_backup.history import open_history_store

    mode, read_stored = signed_in
    if path == "sdk":  # behind a proxy (one NO_PROXY bypasses) every request goes through the SDK
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        _account.cache_clear()
    destination = Destination.checked(container_name)
    assert (storage_account(destination).signed is not None) == (path == "direct")
    store, history = open_store(destination), open_history_store(destination)
    store.create_container()
    history.create_container()
    for name in ("changed.txt", "snapped.txt", "gone.txt"):
        put(store, name, b"listed")
    store.snapshot("snapped.txt")
    listed = dict(store.list(""))
    writer = open_store(destination)  # another run's upload, after the listing
    put(writer, "changed.txt", b"newer")
    put(writer, "snapped.txt", b"newer")

    assert remove_keeping_history(store, history, "", "changed.txt", listed["changed.txt"]) == "changed"
    assert remove_keeping_history(store, history, "", "snapped.txt", listed["snapped.txt"]) == "changed"
    assert remove_keeping_history(store, history, "", "gone.txt", listed["gone.txt"]) == "attic"
    stored = read_stored(container_name)
    assert stored == {"changed.txt": b"newer", "snapped.txt": b"newer"}, mode
    attic = read_stored(history_container(container_name))
    # the deleted blob's content is in the attic; the kept ones' current content was not copied
    assert attic[attic_folder("") + "gone.txt"] == b"listed"
    assert attic.get(attic_folder("") + "snapped.txt") == b"listed"  # its snapshot, copied before the 412
    assert attic_folder("") + "changed.txt" not in attic
    # a delete whose blob changed after the copy: If-Match answers 412 and it stays
    now = dict(store.list(""))["changed.txt"]
    real_copy = history.copy_in

    def copy_then_rewrite(name, source, source_etag=None):
        real_copy(name, source, source_etag)
        put(writer, "changed.txt", b"newest")

    monkeypatch.setattr(history, "copy_in", copy_then_rewrite)
    assert remove_keeping_history(store, history, "", "changed.txt", now) == "changed"
    assert read_stored(container_name)["changed.txt"] == b"newest"


@pytest.mark.parametrize("path", ["direct", "sdk"])
def test_a_mirror_run_keeps_blobs_another_writer_rewrote_and_deletes_the_rest(azurite, checkpoints, make_tree,
                                                                             monkeypatch, container_name, path):
    """The flow, its walk in a child process, storage behind a proxy: a second writer
    rewrites one blob when the run's Copy Blob of it arrives, another when its Delete Blob
    arrives. Both stay with the newer content and the summary says so; the third goes."""
    from azure.storage.blob import BlobServiceClient

    from site_backup.accounts import _account

    files = {f"keep{i}.txt": b"k" for i in range(3)} | {"copy-race.txt": b"old1", "delete-race.txt": b"old2",
                                                        "gone.txt": b"old3"}
    root = make_tree(files)
    writer = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container_name)
    raced = []

    def another_writer(method, where, query, headers):
        copy = headers.get("x-ms-copy-source", "")
        if method == "PUT" and copy.split("?")[0].endswith("/copy-race.txt") and "snapshot=" not in copy \
                or method == "DELETE" and where == f"{container_name}/site/delete-race.txt":
            name = where.rsplit("/", 1)[-1] if method == "DELETE" else "copy-race.txt"
            writer.upload_blob(f"site/{name}", b"newer from another run", overwrite=True)
            raced.append((method, name))

    with FaultProxy(azurite.port) as proxy:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1"))
        if path == "sdk":
            monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        _account.cache_clear()
        try:
            backup_site_content(str(root), container=container_name, prefix="site")
            for name in ("copy-race.txt", "delete-race.txt", "gone.txt"):
                (root / name).unlink()
            proxy.before = another_writer
            mirrored = backup_site_content(str(root), container=container_name, prefix="site", delete_missing=True)
        finally:
            proxy.before = None
            _account.cache_clear()
    assert sorted(raced) == [("DELETE", "delete-race.txt"), ("PUT", "copy-race.txt")]
    assert mirrored.outcome == "completed" and mirrored.exit_code == 0 and mirrored.files_failed == 0
    assert [p.path for p in mirrored.deleted] == ["gone.txt"]
    assert [(p.path, p.reason) for p in mirrored.changed_meanwhile] == [
        ("copy-race.txt", "changed by another writer since this run listed it: kept"),
        ("delete-race.txt", "changed by another writer since this run listed it: kept")]
    assert "2 files changed by another writer meanwhile, not deleted" in mirrored.to_text()
    stored = read_container(azurite, container_name, "site")
    assert stored == {**{f"keep{i}.txt": b"k" for i in range(3)}, "copy-race.txt": b"newer from another run",
                      "delete-race.txt": b"newer from another run"}
