"""Access tiers on a real Azurite: --access-tier writes uploads in Hot, Cool or Cold on the
direct signed requests and on the SDK's, in every sign-in mode (the listing shows the tier;
the signed requests are checked against the SDK's as an oracle); snapshots keep theirs.
Archived blobs (a lifecycle rule's doing) are never read by accident: verify, the no-change
check and restore go by the listing, restore names the fix, --rehydrate asks for it."""

from __future__ import annotations

import hashlib
import os

import pytest

from flows.backup_site_content import backup_site_content
from site_backup.errors import ConfigurationError
from site_backup.tiers import check_access_tier, check_rehydrate
from tests.test_mirror_conditions import direct_and_sdk, recording_server, sdk_signature, signed_in  # noqa: F401 (a fixture)


def _tiers(container: str, snapshots: bool = False) -> dict:
    """{(name, snapshot or None): tier} as the SDK lists them (with the flows' storage settings)."""
    from site_backup.accounts import open_store
    from site_backup.destination import Destination

    client = open_store(Destination.checked(container)).container
    return {(b.name, b.snapshot): getattr(b.blob_tier, "value", b.blob_tier)
            for b in client.list_blobs(include=["snapshots"] if snapshots else None)}


def test_the_tier_is_checked_and_spelled_as_azure_does():
    assert check_access_tier(None) is None and check_access_tier("") is None
    assert [check_access_tier(t) for t in ("hot", "COOL", "Cold")] == ["Hot", "Cool", "Cold"]
    with pytest.raises(ConfigurationError, match="Archive is refused for uploads: an archived blob cannot be read"):
        check_access_tier("archive")
    with pytest.raises(ConfigurationError, match="'Warm' is not a tier uploads can use: give Hot, Cool or Cold"):
        check_access_tier("Warm")
    assert check_rehydrate("high") == "High" and check_rehydrate(None) is None
    with pytest.raises(ConfigurationError, match="give Standard"):
        check_rehydrate("fast")


def test_the_command_line_refuses_archive_before_anything_is_uploaded(tmp_path, capsys):
    from site_backup.cli import main

    (tmp_path / "a.txt").write_bytes(b"a")
    assert main(backup_site_content, [str(tmp_path), "--access-tier", "Archive"]) == 2
    assert "Archive is refused for uploads" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["key", "sas"])
def test_put_blob_and_put_block_list_send_the_tier_as_the_sdk_does(mode):
    from azure.storage.blob import BlobBlock, StandardBlobTier

    from site_backup.storage import RetryLog

    # As the Blob service answers a successful Put Blob or Put Block List.
    server, seen = recording_server(201, {"ETag": '"0x8DCAFE"', "Last-Modified": "Wed, 02 Dec 2026 20:00:00 GMT"})
    try:
        ours, sdk = direct_and_sdk(server, mode)
        data = b"tiered"
        md5 = hashlib.md5(data).digest()
        for tier in ("Hot", "Cool", "Cold"):
            seen.clear()
            sdk.get_blob_client("d/é.txt").upload_blob(data, overwrite=True, standard_blob_tier=StandardBlobTier(tier))
            ours.put("c", "d/é.txt", data, md5, "text/plain", {}, RetryLog(), tier)
            sdk.get_blob_client("d/é.txt").commit_block_list([BlobBlock("AAAA")], standard_blob_tier=StandardBlobTier(tier))
            ours.commit_blocks("c", "d/é.txt", ["AAAA"], md5, "text/plain", {}, RetryLog(), tier)
            assert len(seen) == 4
            for theirs, mine in (seen[0:2], seen[2:4]):
                assert theirs[:3] == mine[:3]
                assert theirs[3]["x-ms-access-tier"] == mine[3]["x-ms-access-tier"] == tier
                if mode == "key":  # the tier header is signed: the SDK's signature of our request is ours
                    assert mine[3]["authorization"] == sdk_signature(server, mine)
        seen.clear()
        ours.put("c", "x", data, md5, "text/plain", {}, RetryLog())  # no tier: the account's default
        assert "x-ms-access-tier" not in seen[0][3]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["direct", "sdk"])
def test_uploads_land_in_the_tier_asked_for_in_every_sign_in_mode(signed_in, path, monkeypatch,
                                                                  container_name, tmp_path):
    """A small file (Put Blob) and a large one (Put Block + Put Block List) in Cool; the
    listing (ours and the SDK's) says Cool. Rewritten in Cold, the snapshot of the Cool
    content stays Cool."""
    from site_backup.accounts import _account, open_store, storage_account
    from site_backup.copy import CopyOptions, copy_batch
    from site_backup.destination import Destination
    from site_backup.files import FileEntry

    mode, _ = signed_in
    if path == "sdk":  # behind a proxy (one NO_PROXY bypasses) every request goes through the SDK
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        _account.cache_clear()
    destination = Destination.checked(container_name)
    assert (storage_account(destination).signed is not None) == (path == "direct")
    files = {"small.txt": b"s" * 100, "large.bin": os.urandom(3000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def back_up(tier: str) -> None:
        batch = [FileEntry(n, len(d), os.stat(tmp_path / n).st_mtime_ns) for n, d in files.items()]
        store = open_store(destination, access_tier=tier)
        store.create_container()
        outcomes = copy_batch(str(tmp_path), batch, store, "", CopyOptions(single_put_size=1000, block_size=1000,
                                                                           access_tier=tier))
        assert {o.status for o in outcomes} == {"uploaded"}, outcomes
        assert {n: b.tier for n, b in open_store(destination).list_folder("")} == dict.fromkeys(files, tier)

    back_up("Cool")
    assert _tiers(container_name) == {(n, None): "Cool" for n in files}
    for name in files:  # changed: the Cool content is snapshotted, the new one written in Cold
        (tmp_path / name).write_bytes(b"changed " + files[name])
        files[name] = b"changed " + files[name]
    back_up("Cold")
    listed = _tiers(container_name, snapshots=True)
    assert {k: v for k, v in listed.items() if k[1] is None} == {(n, None): "Cold" for n in files}, mode
    assert sorted(v for k, v in listed.items() if k[1]) == ["Cool", "Cool"], listed


def test_the_flow_writes_in_the_tier_and_rejects_archive(storage, checkpoints, container_name, make_tree):
    root = make_tree({"index.html": b"<html>", "img/a.png": os.urandom(5000)})
    summary = backup_site_content(str(root), container=container_name, access_tier="cold", single_put_mib=1)
    assert summary.outcome == "completed" and summary.files_uploaded == 2
    assert _tiers(container_name) == {("index.html", None): "Cold", ("img/a.png", None): "Cold"}
    with pytest.raises(ConfigurationError, match="Archive is refused for uploads"):
        backup_site_content(str(root), container=container_name, access_tier="Archive")


# --- archived blobs: Azurite 3.37 archives with Set Blob Tier and refuses reads (409 BlobArchived) ---


def test_archived_blobs_are_compared_by_listing_and_reported_by_restore_with_the_fix(storage, checkpoints,
                                                                                      container_name, make_tree,
                                                                                      tmp_path):
    """Two blobs moved to Archive (as a lifecycle rule would): verify and the no-change
    backups (with checkpoints and with --refresh) go by the listed size and MD5, so
    nothing is read; a restore brings the rest back, reports the two with the fix and
    ends incomplete (exit 1); --rehydrate asks Set Blob Tier for them, and once they are
    online again the next restore completes. --run restores report them alike."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import StandardBlobTier

    from flows.restore_site_content import restore_site_content
    from flows.verify_backup import verify_backup
    from site_backup.destination import Destination
    from site_backup.history import list_runs, open_history_store
    from tests.conftest import read_tree

    site = {"index.html": b"<html>", "old/a.log": os.urandom(3000), "old/b.log": b"b" * 500, "new.txt": b"new"}
    root = make_tree(site)
    assert backup_site_content(str(root), container=container_name).files_uploaded == 4
    container = storage.container(container_name)
    for name in ("old/a.log", "old/b.log"):
        container.get_blob_client(name).set_standard_blob_tier(StandardBlobTier.ARCHIVE)
    with pytest.raises(HttpResponseError) as refused:  # Azurite refuses reads as Azure does
        container.download_blob("old/a.log").readall()
    assert refused.value.error_code == "BlobArchived"

    verified = verify_backup(str(root), container=container_name)
    assert verified.outcome == "verified" and verified.files_matching == 4, verified
    again = backup_site_content(str(root), container=container_name)
    refreshed = backup_site_content(str(root), container=container_name, refresh=True)
    for run in (again, refreshed):
        assert (run.outcome, run.files_unchanged, run.files_uploaded) == ("completed", 4, 0), run
    assert _tiers(container_name)[("old/a.log", None)] == "Archive"  # not rewritten either

    restored = restore_site_content(container_name, str(tmp_path / "t1"))
    assert (restored.outcome, restored.exit_code, restored.files_restored) == ("incomplete", 1, 2)
    assert read_tree(tmp_path / "t1") == {"index.html": b"<html>", "new.txt": b"new"}
    assert sorted(p.path for p in restored.failed) == ["old/a.log", "old/b.log"]
    assert all(p.reason.startswith("archived (Archive tier): not restored") and "--rehydrate" in p.reason
               and "up to 15 hours" in p.reason and "Set Blob Tier" in p.reason for p in restored.failed), restored
    run = list_runs(open_history_store(Destination.checked(container_name)), "")[-1]
    from_run = restore_site_content(container_name, str(tmp_path / "t2"), run_id=run.run_id)
    assert (from_run.outcome, from_run.files_restored) == ("incomplete", 2)
    assert all("archived (Archive tier)" in p.reason for p in from_run.failed)

    asked = restore_site_content(container_name, str(tmp_path / "t1"), rehydrate="high")
    assert (asked.outcome, asked.files_unchanged) == ("incomplete", 2)
    assert all("rehydration to Hot was requested (High priority: Azure takes up to 1 hour)" in p.reason
               for p in asked.failed), asked.failed
    # Azurite 3.37 rehydrates at once (Azure takes hours, listing "rehydrate-pending-to-hot" meanwhile).
    assert _tiers(container_name)[("old/a.log", None)] == "Hot"
    done = restore_site_content(container_name, str(tmp_path / "t1"))
    assert done.outcome == "completed" and read_tree(tmp_path / "t1") == site
