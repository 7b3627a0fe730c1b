"""Our restore of trees other tools uploaded: rclone 1.75 (`rclone copy`) and AzCopy 10.32
(`azcopy copy --preserve-posix-properties`), both real binaries against the test Azurite.
A missing tool fails these tests (run `make setup`), it never skips them."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.restore_site_content import restore_site_content
from flows.verify_backup import verify_backup
from tests.conftest import PROJECT, read_tree

RCLONE = PROJECT / ".venv" / "bin" / "rclone"
AZCOPY = PROJECT / ".tools" / "node_modules" / "@azure-tools" / "azcopy-linux" / "dist" / "bin" / "azcopy_linux_amd64"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

FILES = {
    "index.html": b"<html>home</html>",
    "with space/and more spaces.txt": b"spaces",
    "ünïcødé/日本語/файл.txt": "текст".encode(),
    "emoji-\U0001f600.txt": b"smile",
    "empty.txt": b"",
    "a/b/c/d/deep.bin": os.urandom(70_000),
}
FOLDERS = ["with space", "ünïcødé", "ünïcødé/日本語", "a", "a/b", "a/b/c", "a/b/c/d"]


def tool(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path.name} is not installed at {path}: run `make setup`")
    return str(path)


def make_source(root: Path) -> dict[str, int]:
    """FILES under root with distinct nanosecond times on every file and folder (folders
    last: writing into a folder moves its time); returns each path's mtime_ns."""
    times = {}
    for i, (rel, data) in enumerate(sorted(FILES.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        times[rel] = 1_600_000_000_000_000_000 + i * 86_400 * 10**9 + 123_456_789 + i
    (root / "empty folder").mkdir()
    for i, rel in enumerate(FOLDERS + ["empty folder"]):
        times[rel] = 1_500_000_000_000_000_000 + i * 3_600 * 10**9 + 987_654_321
    for rel, ns in times.items():
        os.utime(root / rel, ns=(ns, ns))
    return times


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{Path(args[0]).name} exit {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def test_restore_of_a_tree_rclone_uploaded(storage, checkpoints, container_name, tmp_path):
    source = tmp_path / "source"
    times = make_source(source)
    env = dict(os.environ, RCLONE_CONFIG_AZ_TYPE="azureblob", RCLONE_CONFIG_AZ_ACCOUNT=ACCOUNT,
               RCLONE_CONFIG_AZ_KEY=KEY, RCLONE_CONFIG_AZ_ENDPOINT=storage.blob_url, RCLONE_CONFIG_DIR=str(tmp_path))
    run([tool(RCLONE), "copy", str(source), f"az:{container_name}/site"], env)

    target = tmp_path / "restored"
    summary = restore_site_content(container_name, str(target), prefix="site")
    assert summary.outcome == "completed", summary.failed + summary.refused
    assert summary.files_restored == len(FILES) and summary.unverified == []  # rclone stores every MD5
    assert read_tree(target) == FILES
    for rel in FILES:  # rclone stores `mtime` with nanoseconds
        assert os.stat(target / rel).st_mtime_ns == times[rel], rel
    # rclone keeps no folders (no markers by default): the files' folders exist, the empty one does not
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_dir()) == sorted(FOLDERS)


def test_restore_of_a_tree_azcopy_uploaded_with_posix_properties(storage, checkpoints, container_name, tmp_path):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    source = tmp_path / "source"
    times = make_source(source)
    storage.container(container_name).create_container()
    sas = generate_container_sas(ACCOUNT, container_name, account_key=KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, list=True, add=True,
                                                                    create=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    env = dict(os.environ, AZCOPY_LOG_LOCATION=str(tmp_path / "azcopy-logs"),
               AZCOPY_JOB_PLAN_LOCATION=str(tmp_path / "azcopy-plans"), AZCOPY_DISABLE_SYSLOG="true")
    out = run([tool(AZCOPY), "copy", f"{source}/*", f"{storage.blob_url}/{container_name}/site?{sas}", "--recursive",
               "--from-to", "LocalBlob", "--preserve-posix-properties", "--log-level", "ERROR"], env)
    assert "Number of Folder Transfers Completed: 8" in out, out  # a marker blob per folder
    markers = [b.name for b in storage.container(container_name).list_blobs(include=["metadata"])
               if (b.metadata or {}).get("hdi_isfolder") == "true"]
    assert len(markers) == 8

    target = tmp_path / "restored"
    summary = restore_site_content(container_name, str(target), prefix="site")
    assert summary.outcome == "completed", summary.failed + summary.refused
    assert summary.files_restored == len(FILES) and summary.files_failed == 0 and summary.files_refused == 0
    assert read_tree(target) == FILES
    folders = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_dir())
    assert folders == sorted(FOLDERS + ["empty folder"])
    for rel, ns in times.items():  # AzCopy's `modtime` holds nanoseconds, for files and folders
        assert os.stat(target / rel).st_mtime_ns == ns, rel

    again = restore_site_content(container_name, str(target), prefix="site")
    assert again.outcome == "completed" and again.files_unchanged == len(FILES)
    checked = verify_backup(str(target), container=container_name, prefix="site")  # the same listing
    assert checked.outcome == "verified" and checked.files_matching == len(FILES) and checked.extra == []
