"""A run never claims a blob it has not seen in this run: checkpoints vouch for local files,
and each batch taken from one is confirmed against this run's listing of the destination
(real Azurite, the real flow and its child-process walk)."""

from __future__ import annotations

import gzip
import json
import subprocess

import pytest

from flows.backup_site_content import backup_site_content
from site_backup import remote
from site_backup.accounts import open_store, storage_account
from site_backup.confirm import unconfirmed
from site_backup.destination import Destination
from site_backup.files import FileEntry
from site_backup.history import history_container, open_history_store
from site_backup.history_restore import check_run
from site_backup.remote import list_destination
from site_backup.azure_store import AzureBlobStore
from tasks.confirm import CONFIRM_BATCHES
from tests.conftest import TestTokenCredential, md5
from tests.test_durability import cli, cli_env, proxy, sas_via, tree, via  # noqa: F401 (proxy is a fixture)
from tests.test_history import runs_of


def ten_files():
    return {f"d{i % 3}/page{i}.html": f"page {i} ".encode() * (20 + i) for i in range(10)}


def manifest_paths(storage, container, run) -> dict[str, dict]:
    history = storage.container(history_container(container))
    lines = [json.loads(line) for line in gzip.decompress(history.download_blob(run.manifest).readall()).splitlines()]
    return {line["p"]: line for line in lines[:-1]}


def stored_and_missing(container, prefix, run):
    destination = Destination.checked(container, prefix)
    return check_run(open_history_store(destination), run, open_store(destination), prefix)


def test_a_blob_deleted_behind_the_checkpoints_is_uploaded_again(storage, checkpoints, container_name, make_tree):
    files = ten_files()
    root = make_tree(files)
    first = backup_site_content(str(root), container=container_name, prefix="site")
    assert first.files_uploaded == 10
    # What a lifecycle rule, the portal or another tool does: the container's ETag stays.
    storage.container(container_name).delete_blob("site/d1/page4.html")

    dry = backup_site_content(str(root), container=container_name, prefix="site", dry_run=True)
    assert dry.files_uploaded == 1 and dry.files_unchanged == 9  # the same decision, nothing sent

    second = backup_site_content(str(root), container=container_name, prefix="site")
    assert second.outcome == "completed"
    assert second.files_uploaded == 1 and second.files_unchanged == 9 and second.bytes_uploaded == len(
        files["d1/page4.html"])
    blob = storage.container(container_name).get_blob_client("site/d1/page4.html")
    assert blob.download_blob().readall() == files["d1/page4.html"]
    run = runs_of(container_name, "site")[-1]
    listed = manifest_paths(storage, container_name, run)
    assert set(listed) == set(files) and listed["d1/page4.html"]["s"] == len(files["d1/page4.html"])
    assert stored_and_missing(container_name, "site", run) == (10, [])

    third = backup_site_content(str(root), container=container_name, prefix="site")
    assert third.files_uploaded == 0 and third.files_unchanged == 10


def test_a_blob_replaced_by_another_tool_is_uploaded_again_and_its_content_kept(storage, checkpoints,
                                                                                 container_name, make_tree):
    files = ten_files()
    root = make_tree(files)
    backup_site_content(str(root), container=container_name)
    container = storage.container(container_name)
    foreign = bytes(reversed(files["d2/page5.html"]))  # same size, other content, no mtime metadata
    from azure.storage.blob import ContentSettings
    container.upload_blob("d2/page5.html", foreign, overwrite=True,
                          content_settings=ContentSettings(content_md5=bytearray(md5(foreign))))

    again = backup_site_content(str(root), container=container_name)
    assert again.outcome == "completed" and again.files_uploaded == 1 and again.files_changed == 1
    assert container.get_blob_client("d2/page5.html").download_blob().readall() == files["d2/page5.html"]
    [snapshot] = [b for b in container.list_blobs(include=["snapshots"]) if b.snapshot]
    kept = container.get_blob_client("d2/page5.html", snapshot=snapshot.snapshot).download_blob().readall()
    assert snapshot.name == "d2/page5.html" and kept == foreign
    run = runs_of(container_name)[-1]
    assert stored_and_missing(container_name, "", run) == (10, [])


def test_a_blob_replaced_with_its_recorded_mtime_is_still_compared_by_content(storage, checkpoints,
                                                                              container_name, make_tree):
    """Another tool that copies the mtime metadata (rclone does) makes the stored time match:
    only the MD5 the checkpoint recorded shows the blob is not this file's content."""
    files = ten_files()
    root = make_tree(files)
    backup_site_content(str(root), container=container_name)
    container = storage.container(container_name)
    metadata = container.get_blob_client("d0/page3.html").get_blob_properties().metadata
    foreign = bytes(reversed(files["d0/page3.html"]))
    from azure.storage.blob import ContentSettings
    container.upload_blob("d0/page3.html", foreign, overwrite=True, metadata=metadata,
                          content_settings=ContentSettings(content_md5=bytearray(md5(foreign))))

    again = backup_site_content(str(root), container=container_name)
    assert again.files_uploaded == 1 and again.files_changed == 1
    assert container.get_blob_client("d0/page3.html").download_blob().readall() == files["d0/page3.html"]


def test_a_no_change_run_with_every_blob_present_uploads_nothing(storage, checkpoints, container_name, make_tree):
    root = make_tree(ten_files())
    backup_site_content(str(root), container=container_name)
    container = storage.container(container_name)
    before = {(b.name, b.etag) for b in container.list_blobs(include=["snapshots"])}
    again = backup_site_content(str(root), container=container_name)
    assert again.outcome == "completed" and again.files_uploaded == 0 and again.files_unchanged == 10
    assert again.batches_from_checkpoint == again.batches
    assert {(b.name, b.etag) for b in container.list_blobs(include=["snapshots"])} == before


def test_the_listing_confirms_on_the_signed_path_and_the_sdk(storage, checkpoints, container_name, make_tree):
    """The same answer from both request paths."""
    files = ten_files()
    root = make_tree(files)
    backup_site_content(str(root), container=container_name, prefix="p")
    storage.container(container_name).delete_blob("p/d0/page0.html")
    entries = [(path, len(data), md5(data), 0, None) for path, data in sorted(files.items())]
    batch = [FileEntry(path, len(data), 0) for path, data in sorted(files.items())]
    destination = Destination.checked(container_name, "p")
    signed = open_store(destination)
    assert signed.signed is not None
    assert unconfirmed(signed, "p", [(batch, entries)]) == [frozenset({"d0/page0.html"})]
    sdk = AzureBlobStore(container_name, lambda: storage.container(container_name))
    assert unconfirmed(sdk, "p", [(batch, entries)]) == [frozenset({"d0/page0.html"})]
    # The run's flat listing of the destination: the same blobs, sizes, MD5s and mtimes.
    storage.container(container_name).upload_blob("p-sibling/x.txt", b"not under p/")
    listed = list_destination(signed, "p/")

    def compared(blobs):  # what confirming reads (the direct listing carries no ETag or write time)
        return {n: (b.size, b.content_md5, b.mtime_ns, b.folder, b.version_id, b.tier) for n, b in blobs.items()}

    assert compared(listed) == compared(list_destination(sdk, "p/")) and len(listed) == 9
    assert unconfirmed(signed, "p", [(batch, entries)], listed) == [frozenset({"d0/page0.html"})]


@pytest.mark.parametrize("mode", ["sas", "entra"])
def test_each_sign_in_mode_uploads_a_deleted_blob_again(mode, request, checkpoints, container_name, make_tree,
                                                        monkeypatch):
    """The account key is the tests above; a SAS and Entra ID list the same way."""
    from azure.storage.blob import ContainerClient

    if mode == "entra":
        url, cert = request.getfixturevalue("azurite_oauth")
        request.getfixturevalue("entra_storage")
        container = ContainerClient(url, container_name, credential=TestTokenCredential(), connection_verify=str(cert))
    else:
        azurite = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", sas_via(azurite.port))
        container = azurite.container(container_name)
    files = ten_files()
    root = make_tree(files)
    backup_site_content(str(root), container=container_name)
    container.delete_blob("d0/page6.html")
    again = backup_site_content(str(root), container=container_name)
    assert again.outcome == "completed" and again.files_uploaded == 1 and again.files_unchanged == 9
    assert container.download_blob("d0/page6.html").readall() == files["d0/page6.html"]


def listings(proxy, since: int, container: str) -> list[str]:
    """Each List Blobs of `container` the proxy forwarded after request `since`."""
    return [path for method, path, comp in proxy.log[since:] if method == "GET" and path == container
            and comp == "list"]


def test_a_no_change_run_confirms_every_batch_with_one_listing_of_the_destination(
        azurite, proxy, checkpoints, monkeypatch, make_tree, container_name):
    files, root = tree(make_tree, 600, seed=5)  # 13 folders
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    backup_site_content(str(root), container=container_name, files_per_batch=200)
    before = proxy.requests
    again = backup_site_content(str(root), container=container_name, files_per_batch=200)
    assert (again.files_unchanged, again.files_uploaded) == (600, 0) and again.batches_from_checkpoint == again.batches
    assert 3 <= again.batches <= CONFIRM_BATCHES  # several batches, confirmed by one task run
    # One page to see the prefix is not empty, then one flat listing for all 13 folders.
    assert len(listings(proxy, before, container_name)) == 2, proxy.log[before:]
    # Create Container, its properties, that page, the listing; history: the lock (Put
    # Blob, Lease Blob, Delete Blob, and one List Blobs of the locks for an overlapping
    # prune) and the manifest (Put Block, Put Block List).
    assert proxy.requests - before <= 4 + 6, proxy.log[before:]


def test_a_destination_too_large_to_list_whole_is_listed_once_per_folder(azurite, proxy, checkpoints, monkeypatch,
                                                                         make_tree, container_name):
    files, root = tree(make_tree, 600, seed=5)  # 13 folders
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    backup_site_content(str(root), container=container_name, files_per_batch=200)
    monkeypatch.setattr("site_backup.remote.LISTED_AT_MOST", 599)  # one blob short of the tree
    before = proxy.requests
    again = backup_site_content(str(root), container=container_name, files_per_batch=200)
    assert (again.files_unchanged, again.files_uploaded) == (600, 0) and again.batches_from_checkpoint == again.batches
    # The first page, the flat listing given up at 599 blobs (one page here), then each of
    # the 13 folders once, however many batches share it.
    assert len(listings(proxy, before, container_name)) == 2 + 13, proxy.log[before:]


class Unanswered:
    """A store whose listing fails, as one started ahead does when storage drops it."""

    def list_folder(self, prefix: str, recursive: bool = False):
        raise ConnectionResetError("the connection was dropped")


def test_a_listing_started_ahead_that_failed_is_read_again_by_the_run(storage, checkpoints, container_name,
                                                                      make_tree):
    files = ten_files()
    root = make_tree(files)
    backup_site_content(str(root), container=container_name)
    storage.container(container_name).delete_blob("d2/page5.html")
    url = storage_account(Destination.checked(container_name)).url
    remote.list_ahead(Unanswered(), url, container_name, "")
    again = backup_site_content(str(root), container=container_name)
    assert remote.listed_ahead(url, container_name, "") is None  # the run took it
    assert (again.outcome, again.files_uploaded, again.files_unchanged) == ("completed", 1, 9)
    assert storage.container(container_name).download_blob("d2/page5.html").readall() == files["d2/page5.html"]


def test_the_command_line_checks_and_lists_the_destination_once_before_the_lock_and_still_sees_a_deleted_blob(
        azurite, proxy, prefect_server, checkpoints, make_tree, container_name):
    """The script starts its storage check and the listing while Prefect imports
    (site_backup/cli_head_start.py); the flow takes the check's answer, and confirms its
    checkpoints with that listing."""
    files, root = tree(make_tree, 60, seed=7)
    env = cli_env(prefect_server, via(proxy), checkpoints)

    def run() -> dict:
        done = subprocess.run(cli(root, container_name, env), env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    run()
    before = len(proxy.log)
    unchanged = run()
    assert (unchanged["files_uploaded"], unchanged["files_unchanged"]) == (0, 60)
    log = proxy.log[before:]
    listings = [i for i, (method, path, comp) in enumerate(log) if (method, path, comp) == ("GET", container_name, "list")]
    lock = next(i for i, (method, path, _) in enumerate(log) if method == "PUT" and "/locks/" in path)
    # The command line's check reads one page (is the prefix empty?), and the flow takes
    # its answer; the other listing is the flat one, sent before the lock; nothing else.
    assert len(listings) == 2 and listings[-1] < lock, log
    assert [entry for entry in log if entry[2] == "container"] == [("PUT", container_name, "container"),
                                                                  ("HEAD", container_name, "container")], log
    azurite.container(container_name).delete_blob("d03/file-0003.dat")
    again = run()
    assert (again["outcome"], again["files_uploaded"], again["files_unchanged"]) == ("completed", 1, 59)
    assert azurite.container(container_name).download_blob("d03/file-0003.dat").readall() == files["d03/file-0003.dat"]
