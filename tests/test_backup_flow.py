"""The backup flow end to end: a real Azurite, a Prefect test server, isolated checkpoints."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from flows.backup_site_content import backup_site_content
from site_backup.errors import ConfigurationError
from site_backup.blob_metadata import parse_mtime
from tests.conftest import flow_run_messages, read_container

SITE = {
    "index.html": b"<html><body>home</body></html>",
    "about/index.html": b"<html>about</html>",
    "css/site.css": b"body { color: #333 }\n" * 50,
    "img/logo.png": os.urandom(20_000),
    "blog/2026/11/post one.html": b"<p>post</p>",
    "downloads/archive.zip": os.urandom(300_000),
}


def test_sample_scenario_every_blob_identical_and_total_is_the_sum_of_sizes(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    summary = backup_site_content(str(root), container=container_name)
    assert summary.outcome == "completed" and summary.exit_code == 0
    assert summary.bytes_uploaded == sum(len(v) for v in SITE.values()) == summary.bytes_total
    assert summary.files_uploaded == summary.files_total == len(SITE)
    assert read_container(storage, container_name) == SITE


def test_rerun_uploads_nothing_and_uses_checkpoints(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    backup_site_content(str(root), container=container_name)
    again = backup_site_content(str(root), container=container_name)
    assert again.bytes_uploaded == 0 and again.files_unchanged == len(SITE)
    assert again.batches_from_checkpoint == again.batches >= 1


def test_rerun_without_checkpoints_compares_with_the_blobs(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    backup_site_content(str(root), container=container_name)
    shutil.rmtree(checkpoints)
    again = backup_site_content(str(root), container=container_name)
    assert again.bytes_uploaded == 0 and again.files_unchanged == len(SITE) and again.batches_from_checkpoint == 0


def test_changing_one_file_reuploads_only_that_file(storage, checkpoints, container_name, make_tree):
    files = {f"pages/p{i:03d}.html": f"page {i}".encode() for i in range(300)}
    root = make_tree(files)
    backup_site_content(str(root), container=container_name, files_per_batch=50)
    (root / "pages/p123.html").write_bytes(b"edited page")
    again = backup_site_content(str(root), container=container_name, files_per_batch=50)
    assert (again.files_uploaded, again.bytes_uploaded) == (1, len(b"edited page"))
    assert again.files_unchanged == 299
    assert again.batches_from_checkpoint == again.batches - 1
    assert read_container(storage, container_name)["pages/p123.html"] == b"edited page"


def test_odd_names_empty_file_and_prefix(storage, checkpoints, container_name, make_tree):
    files = {
        "with space.txt": b"1",
        "per%25cent%.txt": b"2",
        "hash#and?query.txt": b"3",
        "ünïcødé/日本語/файл.txt": b"4",
        "emoji-\U0001f600.txt": b"5",
        "plus+and&amp;=.txt": b"6",
        "/".join(["deep"] * 30) + "/leaf.txt": b"7",
        "l" * 250: b"8",
        "empty.txt": b"",
    }
    root = make_tree(files)
    summary = backup_site_content(str(root), container=container_name, prefix="/site/2026/")
    assert summary.files_failed == 0, summary.failed
    assert read_container(storage, container_name, prefix="site/2026") == files
    assert summary.destination.endswith(f"/{container_name}/site/2026/")


def test_blob_properties_md5_type_mtime(storage, checkpoints, container_name, make_tree):
    root = make_tree({"index.html": b"<html></html>"})
    backup_site_content(str(root), container=container_name)
    props = storage.container(container_name).get_blob_client("index.html").get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(b"<html></html>").digest()
    assert props.content_settings.content_type == "text/html; charset=utf-8"
    assert parse_mtime(props.metadata["mtime"]) == os.stat(root / "index.html").st_mtime_ns


@pytest.mark.slow
def test_file_over_64_mib_goes_up_in_blocks_with_content_md5(storage, checkpoints, container_name, tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    digest = hashlib.md5()
    with open(root / "video.mp4", "wb") as f:
        for _ in range(65):
            chunk = os.urandom(2**20)
            digest.update(chunk)
            f.write(chunk)
        f.write(b"tail")
        digest.update(b"tail")
    summary = backup_site_content(str(root), container=container_name)
    assert summary.bytes_uploaded == 65 * 2**20 + 4
    blob = storage.container(container_name).get_blob_client("video.mp4")
    props = blob.get_blob_properties()
    assert props.size == 65 * 2**20 + 4 and props.blob_type == "BlockBlob"
    assert bytes(props.content_settings.content_md5) == digest.digest()
    assert hashlib.md5(blob.download_blob().readall()).digest() == digest.digest()
    assert len(blob.get_block_list()[0]) == 9  # 8 MiB blocks


@pytest.mark.parametrize("path", ["direct", "sdk"])
def test_sas_connection_string_backs_up(azurite, monkeypatch, checkpoints, container_name, make_tree, path):
    # A SAS takes the direct requests like a key does; behind a proxy (here one that
    # NO_PROXY bypasses) container, Put Blob, Put Block and Put Block List go through the SDK.
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from site_backup.accounts import _account
    from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, list=True, create=True, add=True),
                               expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={azurite.blob_url};SharedAccessSignature={sas}")
    if path == "sdk":
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _account.cache_clear()
    files = {"small.txt": b"small", "large.bin": os.urandom(3 * 2**20 + 5)}
    root = make_tree(files)
    summary = backup_site_content(str(root), container=container_name, single_put_mib=1, block_size_mib=1)
    from site_backup.accounts import storage_account
    from site_backup.destination import Destination

    assert (storage_account(Destination(container_name)).signed is not None) == (path == "direct")
    assert summary.files_uploaded == 2 and summary.files_failed == 0, summary.failed
    assert read_container(azurite, container_name) == files
    # history on the same path: a snapshot before the change, a manifest per run
    from site_backup.history import list_runs, open_history_store

    (root / "small.txt").write_bytes(b"changed")
    again = backup_site_content(str(root), container=container_name, single_put_mib=1, block_size_mib=1)
    assert again.files_changed == 1
    assert [r.files for r in list_runs(open_history_store(Destination(container_name)), "")] == [2, 2]
    _account.cache_clear()
    large = azurite.container(container_name).get_blob_client("large.bin")
    assert bytes(large.get_blob_properties().content_settings.content_md5) == hashlib.md5(files["large.bin"]).digest()
    assert len(large.get_block_list()[0]) == 4


def test_per_file_problems_are_reported_and_the_rest_is_backed_up(storage, checkpoints, container_name, make_tree):
    too_deep = "/".join(["d"] * 260) + "/f.txt"  # more segments than Azure allows
    root = make_tree({"ok.txt": b"fine", "real/x.txt": b"x", too_deep: b"deep"})
    os.symlink("ok.txt", root / "link.txt")
    os.mkfifo(root / "pipe")
    fd = os.open(os.fsencode(root) + b"/bad\xfe.txt", os.O_CREAT | os.O_WRONLY)  # not UTF-8: backed up
    os.close(fd)
    summary = backup_site_content(str(root), container=container_name)
    assert summary.outcome == "incomplete" and summary.exit_code == 1
    assert {p.path for p in summary.skipped} == {"link.txt", "pipe"}
    assert [p.path for p in summary.failed] == [too_deep]
    assert summary.files_total == 6 and summary.files_uploaded == 3
    assert read_container(storage, container_name) == {"ok.txt": b"fine", "real/x.txt": b"x", "bad\u201bFE.txt": b""}
    state = backup_site_content(str(root), container=container_name, return_state=True)
    assert (state.type.value, state.name) == ("COMPLETED", "Incomplete") and "1 file failed" in state.message
    assert state.result().files_failed == 1


def test_name_the_service_rejects_fails_that_file_only(storage, checkpoints, container_name, make_tree):
    # Azure refuses blob names over 1024 characters or 254 segments; the file system takes them.
    deep = "/".join(["d"] * 260) + "/f.txt"
    long = "/".join(["n" * 200] * 6)
    root = make_tree({"ok.txt": b"1", deep: b"2", long: b"3"})
    summary = backup_site_content(str(root), container=container_name)
    assert summary.files_uploaded == 1 and summary.files_failed == 2
    reasons = {p.path: p.reason for p in summary.failed}
    assert "261 path segments" in reasons[deep] and "1205 characters" in reasons[long]
    assert read_container(storage, container_name) == {"ok.txt": b"1"}


def test_dry_run_uploads_nothing_and_leaves_no_checkpoint(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    dry = backup_site_content(str(root), container=container_name, dry_run=True)
    assert dry.dry_run and dry.files_uploaded == len(SITE) and dry.bytes_uploaded == dry.bytes_total
    assert read_container(storage, container_name) == {}
    real = backup_site_content(str(root), container=container_name)
    assert real.files_uploaded == len(SITE) and real.batches_from_checkpoint == 0


def test_include_exclude_and_refresh(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    summary = backup_site_content(str(root), container=container_name, include=["*.html"], exclude=["blog/**"])
    assert sorted(read_container(storage, container_name)) == ["about/index.html", "index.html"]
    assert summary.files_excluded == 4
    storage.container(container_name).delete_blob("index.html")
    refreshed = backup_site_content(str(root), container=container_name, include=["*.html"], exclude=["blog/**"],
                                    refresh=True)
    assert refreshed.files_uploaded == 1 and refreshed.batches_from_checkpoint == 0


def test_unreachable_storage_is_a_configuration_error(monkeypatch, checkpoints, make_tree):
    from site_backup.credentials import azurite_connection_string
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(url))
    with pytest.raises(ConfigurationError, match=f"cannot reach blob storage at {url}"):
        backup_site_content(str(make_tree(SITE)), container="backups")


def test_rejected_credentials_are_a_configuration_error_without_the_key(storage, monkeypatch, checkpoints, make_tree):
    wrong = storage.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    with pytest.raises(ConfigurationError, match="rejected the credentials|refused access") as info:
        backup_site_content(str(make_tree(SITE)), container="backups")
    assert "AAAA" not in str(info.value) and "AccountKey" not in str(info.value)


def test_credentials_block_is_used_and_an_unknown_one_is_explained(azurite, monkeypatch, checkpoints, container_name,
                                                                    make_tree):
    from prefect_azure.credentials import AzureBlobStorageCredentials
    from pydantic import SecretStr

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    AzureBlobStorageCredentials(connection_string=SecretStr(azurite.connection_string)).save(
        "test-azurite", overwrite=True
    )
    root = make_tree({"a.txt": b"from a block"})
    summary = backup_site_content(str(root), container=container_name, credentials_block="test-azurite")
    assert summary.files_uploaded == 1 and summary.destination.startswith(azurite.blob_url)
    assert read_container(azurite, container_name) == {"a.txt": b"from a block"}
    with pytest.raises(ConfigurationError, match="no Azure Blob Storage Credentials block named 'nope'"):
        backup_site_content(str(root), container=container_name, credentials_block="nope")


def test_verify_finds_missing_different_and_extra_blobs(storage, checkpoints, container_name, make_tree):
    from flows.verify_backup import verify_backup

    root = make_tree(SITE)
    backup_site_content(str(root), container=container_name)
    clean = verify_backup(str(root), container=container_name)
    assert (clean.outcome, clean.exit_code, clean.files_matching) == ("verified", 0, len(SITE))
    container = storage.container(container_name)
    container.delete_blob("css/site.css")  # deleted behind the backup's back
    container.upload_blob("index.html", b"<html>tampered</html>", overwrite=True)
    container.upload_blob("old/removed.html", b"gone from the tree", overwrite=True)
    (root / "about/index.html").write_bytes(b"<html>changed locally, same length?</html>")
    found = verify_backup(str(root), container=container_name)
    assert found.outcome == "differences" and found.exit_code == 1
    assert [p.path for p in found.missing] == ["css/site.css"]
    assert {p.path for p in found.different} == {"index.html", "about/index.html"}
    assert found.extra == ["old/removed.html"]
    # The local change invalidates the batch's checkpoint, so its files are compared again.
    assert backup_site_content(str(root), container=container_name).files_uploaded == 3
    assert verify_backup(str(root), container=container_name).outcome == "verified"
    # A blob deleted behind the backup's back: verify finds it, and the next run's listing does
    # too, whatever its checkpoint says (tests/test_confirm.py has the rest).
    container.delete_blob("css/site.css")
    assert verify_backup(str(root), container=container_name).files_missing == 1
    assert backup_site_content(str(root), container=container_name).files_uploaded == 1
    assert verify_backup(str(root), container=container_name).outcome == "verified"


def test_verify_of_a_missing_container_is_a_configuration_error(storage, checkpoints, make_tree):
    from flows.verify_backup import verify_backup

    with pytest.raises(ConfigurationError, match="does not exist"):
        verify_backup(str(make_tree(SITE)), container="no-such-container")


def test_checkpoints_in_a_blob_container_let_another_machine_resume(storage, checkpoints, container_name, make_tree):
    from prefect_azure.blob_storage import AzureBlobStorageContainer
    from prefect_azure.credentials import AzureBlobStorageCredentials
    from pydantic import SecretStr

    credentials = AzureBlobStorageCredentials(connection_string=SecretStr(storage.connection_string))
    AzureBlobStorageContainer(container_name=f"{container_name}-cp", base_folder=container_name,
                              credentials=credentials).save("test-checkpoints", overwrite=True)
    root = make_tree(SITE)
    first = backup_site_content(str(root), container=container_name, checkpoint_block="test-checkpoints")
    stored = [b.name for b in storage.container(f"{container_name}-cp").list_blobs(name_starts_with=container_name)]
    assert len(stored) == first.batches and all("site-backup-batch-" in name for name in stored)
    shutil.rmtree(checkpoints, ignore_errors=True)  # "another machine": no local checkpoints
    again = backup_site_content(str(root), container=container_name, checkpoint_block="test-checkpoints")
    assert again.batches_from_checkpoint == again.batches and again.bytes_uploaded == 0


def test_expired_checkpoints_are_not_used(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    backup_site_content(str(root), container=container_name, checkpoint_days=1e-9)  # 86 µs
    again = backup_site_content(str(root), container=container_name, checkpoint_days=1e-9)
    assert again.batches_from_checkpoint == 0 and again.files_unchanged == len(SITE)


def test_checkpoints_do_not_hide_a_deleted_container(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    backup_site_content(str(root), container=container_name)
    storage.container(container_name).delete_container()
    again = backup_site_content(str(root), container=container_name)
    assert (again.files_uploaded, again.batches_from_checkpoint) == (len(SITE), 0)
    assert read_container(storage, container_name) == SITE


def test_checkpoints_of_an_earlier_container_are_not_trusted_in_a_recreated_one(storage, checkpoints, container_name,
                                                                                 make_tree):
    # The container is deleted and re-created, and one file lands in it before the next run:
    # the prefix is no longer empty, but the old checkpoints describe blobs that are gone.
    files = {f"pages/p{i:03d}.html": f"page {i}".encode() for i in range(120)}
    root = make_tree(files)
    backup_site_content(str(root), container=container_name, files_per_batch=20)
    container = storage.container(container_name)
    container.delete_container()
    container.create_container()
    container.upload_blob("pages/p000.html", b"page 0")
    again = backup_site_content(str(root), container=container_name, files_per_batch=20)
    assert again.batches_from_checkpoint == 0
    assert (again.files_uploaded, again.files_unchanged) == (119, 1)
    assert read_container(storage, container_name) == files


def test_a_root_that_vanishes_mid_run_fails_the_run_and_counts_what_was_uploaded(storage, checkpoints, container_name,
                                                                                  make_tree, monkeypatch, capsys):
    import json

    from site_backup.cli import main
    from site_backup.azure_store import AzureBlobStore

    files = {f"d{i % 4}/f{i:03d}.txt": f"file {i}".encode() for i in range(200)}
    root = make_tree(files)
    put, puts, lock = AzureBlobStore.put, [], __import__("threading").Lock()

    def put_then_remove_the_root(self, name, data, **kwargs):
        put(self, name, data, **kwargs)
        if self.container_name != container_name:
            return  # the run's lock blob in the history container
        with lock:
            puts.append(name)
            if len(puts) == 20:
                shutil.rmtree(root)

    monkeypatch.setattr(AzureBlobStore, "put", put_then_remove_the_root)
    code = main(backup_site_content, [str(root), "--container", container_name, "--json", "--no-progress",
                                      "--files-in-flight", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1 and summary["outcome"] == "failed"
    assert "root directory" in summary["error"] and "vanished" in summary["error"]
    assert summary["files_uploaded"] == len(puts) >= 20 and summary["files_skipped"] == 0
    assert summary["files_uploaded"] + summary["files_failed"] == len(files)


def test_a_container_scoped_sas_backs_up_into_its_existing_container(azurite, monkeypatch, checkpoints, container_name,
                                                                     make_tree):
    # Such a SAS may not create containers nor read their properties: the backup goes on,
    # guarded by the empty-prefix rule; another container is refused as the credentials' fault.
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from site_backup.accounts import _account
    from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY

    azurite.container(container_name).create_container()
    sas = generate_container_sas(AZURITE_ACCOUNT, container_name, AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                                    list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={azurite.blob_url};SharedAccessSignature={sas}")
    _account.cache_clear()
    root = make_tree(SITE)
    summary = backup_site_content(str(root), container=container_name)
    assert (summary.outcome, summary.files_uploaded) == ("completed", len(SITE))
    assert read_container(azurite, container_name) == SITE
    assert backup_site_content(str(root), container=container_name, refresh=True).files_unchanged == len(SITE)
    with pytest.raises(ConfigurationError, match="rejected the credentials"):
        backup_site_content(str(root), container="another-container")
    _account.cache_clear()


def test_the_run_log_says_what_is_backed_up_and_how_it_ended(storage, checkpoints, container_name, make_tree):
    root = make_tree(SITE)
    _, text = flow_run_messages(lambda: backup_site_content(str(root), container=container_name, return_state=True))
    assert any(m.startswith(f"Backing up {root} ({len(SITE)} files") and container_name in m for m in text), text
    assert any(m.startswith(f"Backup completed: {len(SITE)} files, {len(SITE)} uploaded") for m in text), text
