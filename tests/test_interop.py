"""Interoperability with the real tools against Azurite: rclone 1.75 and AzCopy 10.32 read
our backups of a tree of hostile names, and we read rclone's. A missing tool fails the test
(`make setup` installs both); it is never skipped.

Counts the tools report are printed (`pytest -s`) so they can be quoted."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from flows.backup_site_content import backup_site_content
from flows.restore_site_content import restore_site_content
from flows.verify_backup import verify_backup
from site_backup.content_types import content_type
from site_backup.credentials import azurite_connection_string
from site_backup.names import encode_path
from tests.conftest import PROJECT, read_tree
from tests.test_hostile_names import HOSTILE_NAMES

RCLONE = PROJECT / ".venv" / "bin" / "rclone"
AZCOPY = PROJECT / ".tools" / "node_modules" / "@azure-tools" / "azcopy-linux" / "dist" / "bin" / "azcopy_linux_amd64"
ACCOUNT = "devstoreaccount1"
KEY = re.search(r"AccountKey=([^;]+)", azurite_connection_string()).group(1)

# The hostile names, plus ordinary web and log files (content types are compared too).
TREE = dict(HOSTILE_NAMES) | {
    "index.html": b"<html>home</html>",
    "logs/app.log": b"log line\n" * 100,
    "docs/README.md": b"# readme",
    "img/photo.webp": os.urandom(3000),
    "js/app.mjs": b"export {}",
    "css/site.css": b"body {}",
    "data/events.json": b"{}",
}
# Names AzCopy stores as they are: none that needs encoding.
ORDINARY = {rel for rel in TREE if encode_path(rel) == rel}
# rclone's local backend cannot open a local file whose name holds U+201B (it looks for
# the name with the quote doubled: "no such file or directory"); --local-encoding Raw makes
# it take local names as they are, as we do. The remote side keeps rclone's defaults.
RCLONE_LOCAL_RAW = ["--local-encoding", "Raw"]
HOLDING_QUOTE = {rel for rel in TREE if "\u201b" in rel}


def tool(path) -> str:
    if not path.exists():
        pytest.fail(f"{path.name} is not installed at {path}: run `make setup`")
    return str(path)


def rclone(azurite, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, RCLONE_CONFIG_AZ_TYPE="azureblob", RCLONE_CONFIG_AZ_ACCOUNT=ACCOUNT,
               RCLONE_CONFIG_AZ_KEY=KEY, RCLONE_CONFIG_AZ_ENDPOINT=azurite.blob_url, RCLONE_CONFIG="/dev/null")
    return subprocess.run([tool(RCLONE), *args], env=env, capture_output=True, text=True, errors="backslashreplace",
                          timeout=300)


def azcopy(azurite, tmp_path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, AZCOPY_LOG_LOCATION=str(tmp_path / "azcopy-logs"),
               AZCOPY_JOB_PLAN_LOCATION=str(tmp_path / "azcopy-plans"), AZCOPY_DISABLE_SYSLOG="true")
    return subprocess.run([tool(AZCOPY), *args], env=env, capture_output=True, text=True, errors="backslashreplace",
                          timeout=300)


def sas_url(azurite, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(ACCOUNT, container, account_key=KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{azurite.blob_url}/{container}?{sas}"


def stamp(root) -> None:
    for i, rel in enumerate(sorted(TREE)):
        t = 1_650_000_000_123_456_789 + i * 1_000_000_007
        os.utime(root / rel, ns=(t, t))


def listing_status(azurite, container: str) -> int:
    import urllib.request

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(ACCOUNT, container, account_key=KEY, permission=ContainerSasPermissions(list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    with urllib.request.urlopen(f"{azurite.blob_url}/{container}?restype=container&comp=list&{sas}") as answer:
        return answer.status


def test_rclone_and_azcopy_read_our_backup_and_we_restore_it(storage, checkpoints, container_name, make_tree,
                                                             tmp_path):
    source = make_tree(TREE)
    stamp(source)
    backup = backup_site_content(str(source), container=container_name, prefix="site")
    assert (backup.files_uploaded, backup.files_failed) == (len(TREE), 0), backup.failed
    assert listing_status(storage, container_name) == 200

    check = rclone(storage, "check", str(source), f"az:{container_name}/site", "--download", *RCLONE_LOCAL_RAW)
    print(f"\nrclone check --download: {[line[20:] for line in check.stderr.splitlines() if 'NOTICE: Azure' in line]}")
    assert check.returncode == 0, check.stderr[-3000:]
    assert "0 differences found" in check.stderr and f"{len(TREE)} matching files" in check.stderr

    # With rclone's default local encoding too, apart from the local files it cannot open.
    plain = rclone(storage, "check", str(source), f"az:{container_name}/site", "--download")
    unopened = set(re.findall(r"ERROR : (.*?): failed to download", plain.stderr))
    print(f"rclone check --download, default local encoding: "
          f"{[line[20:] for line in plain.stderr.splitlines() if 'NOTICE: Azure' in line]}, cannot open {unopened}")
    assert "0 differences found" in plain.stderr
    assert f"{len(TREE) - len(HOLDING_QUOTE)} matching files" in plain.stderr
    assert len(unopened) == len(HOLDING_QUOTE) and all("\u201b" in name for name in unopened)
    dry = rclone(storage, "copy", str(source), f"az:{container_name}/site", "--dry-run", "-v", *RCLONE_LOCAL_RAW)
    would_copy = re.findall(r"NOTICE: (.*): Skipped copy as --dry-run is set", dry.stderr)
    print(f"rclone copy --dry-run: {len(would_copy)} transfers; "
          f"{[line for line in dry.stderr.splitlines() if 'Transferred:' in line or 'Checks:' in line]}")
    assert dry.returncode == 0 and would_copy == [], dry.stderr[-3000:]

    sync = azcopy(storage, tmp_path, "sync", str(source), sas_url(storage, container_name).replace(
        f"/{container_name}?", f"/{container_name}/site?"), "--from-to", "LocalBlob", "--compare-hash=MD5",
        "--dry-run", "--recursive")
    transfers = re.findall(r"DRYRUN: copy (.*?) to http", sync.stdout, re.DOTALL)
    print(f"azcopy sync --compare-hash=MD5 --dry-run: {len(transfers)} transfers of {len(TREE)} files "
          f"({len(ORDINARY)} with names that need no encoding)")
    assert sync.returncode == 0, sync.stdout[-3000:]
    # AzCopy does not encode names: it would upload each file whose name needs encoding
    # again under its raw name (which the service would then mangle or refuse); every
    # other file it finds unchanged by MD5.
    assert not [t for t in transfers if any(t.endswith(rel) for rel in ORDINARY)], transfers
    assert len(transfers) == len(TREE) - len(ORDINARY), transfers

    target = tmp_path / "restored"
    restored = restore_site_content(container_name, str(target), prefix="site")
    assert (restored.outcome, restored.files_restored) == ("completed", len(TREE)), restored
    assert read_tree(target) == TREE
    assert all(os.stat(target / rel).st_mtime_ns == os.stat(source / rel).st_mtime_ns for rel in TREE)
    verified = verify_backup(str(target), container=container_name, prefix="site")
    assert (verified.outcome, verified.files_matching, verified.extra) == ("verified", len(TREE), [])
    assert listing_status(storage, container_name) == 200


def test_we_read_what_rclone_wrote(storage, checkpoints, container_name, make_tree, tmp_path):
    source = make_tree(TREE)
    stamp(source)
    storage.container(container_name).create_container()
    filled = rclone(storage, "copy", str(source), f"az:{container_name}", *RCLONE_LOCAL_RAW)
    assert filled.returncode == 0, filled.stderr[-3000:]
    blobs = {b.name: b for b in storage.container(container_name).list_blobs(include=["metadata"])}
    assert set(blobs) == {encode_path(rel) for rel in TREE}  # rclone's names are ours
    assert {rel: blobs[encode_path(rel)].content_settings.content_type for rel in TREE} == {
        rel: content_type(rel) for rel in TREE}

    ours = backup_site_content(str(source), container=container_name)
    print(f"\nour backup into the container rclone filled: {ours.files_uploaded} uploaded, "
          f"{ours.files_unchanged} unchanged")
    assert (ours.files_uploaded, ours.files_unchanged, ours.files_failed) == (0, len(TREE), 0)

    target = tmp_path / "restored"
    restored = restore_site_content(container_name, str(target))
    print(f"our restore of rclone's upload: {restored.files_restored} restored, {len(restored.unverified)} "
          f"unverified, {restored.files_refused} refused, {restored.files_failed} failed")
    assert (restored.outcome, restored.files_restored, restored.unverified) == ("completed", len(TREE), [])
    assert read_tree(target) == TREE
    assert all(os.stat(target / rel).st_mtime_ns == os.stat(source / rel).st_mtime_ns for rel in TREE)
