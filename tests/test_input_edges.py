"""Hostile input end to end (issue 11, items 5 and 6): invalid globs through the command line
and the flow, and modification times outside datetime's years against a real Azurite."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from flows.backup_site_content import backup_site_content
from site_backup.cli import main
from site_backup.credentials import AZURITE_KEY
from site_backup.errors import ConfigurationError
from site_backup.blob_metadata import parse_mtime


def never_called(**kwargs):
    raise AssertionError("the flow must not start on bad input")


never_called.with_options = lambda **kw: never_called


@pytest.mark.parametrize(
    "option,pattern,message",
    [
        ("--include", "[z-a]", "error: invalid pattern '[z-a]': range 'z-a' is reversed: write it as 'a-z'\n"),
        ("--exclude", "**/[!]", "error: invalid pattern '**/[!]': empty character class: put characters between "
                                "the brackets, e.g. '[ab]', or write '\\[' for a literal '['\n"),
        ("--include", "[", "error: invalid pattern '[': '[' is never closed: close the class with ']', "
                           "or write '\\[' for a literal '['\n"),
    ],
)
def test_invalid_glob_exits_2_with_one_line(tmp_path, capsys, option, pattern, message):
    # Before: a traceback and exit 1 for the first two; the third matched nothing, silently.
    assert main(never_called, [str(tmp_path), option, pattern]) == 2
    assert capsys.readouterr().err == message


def test_flow_with_an_invalid_glob_fails_naming_it_and_creates_nothing(storage, checkpoints, container_name,
                                                                       make_tree):
    # The flow is what a deployment run's worker executes: the run fails with this message.
    root = make_tree({"a.txt": b"x"})
    with pytest.raises(ConfigurationError, match=r"^invalid pattern '\*\*/\[!\]': empty character class"):
        backup_site_content(str(root), container=container_name, exclude=["**/[!]"])
    assert not storage.container(container_name).exists()


# mtime in seconds (or ns) -> what is stored, as Go's time.Format (rclone) writes the year.
FAR_TIMES = {
    "far.txt": (300_000_000_000 * 10**9, "11476-08-15T05:20:00Z"),
    "year0.txt": (-62_135_596_801 * 10**9, "0000-12-31T23:59:59Z"),
    "bc.txt": (-70_000_000_000 * 10**9 - 5, "-0249-10-15T19:33:19.999999995Z"),
}


@pytest.fixture
def far_tree():
    """Files with those mtimes, on tmpfs: ext4 clamps mtimes to 1901-2446."""
    root = tempfile.mkdtemp(prefix="far-times-", dir="/dev/shm")
    try:
        for name, (mtime_ns, _) in FAR_TIMES.items():
            path = os.path.join(root, name)
            with open(path, "wb") as f:
                f.write(name.encode())
            os.utime(path, ns=(mtime_ns, mtime_ns))
            assert os.stat(path).st_mtime_ns == mtime_ns, "the file system did not keep the mtime"
        yield root
    finally:
        shutil.rmtree(root)


def test_times_outside_datetime_years_back_up_exactly_and_rerun_unchanged(storage, checkpoints, container_name,
                                                                         far_tree, project_python):
    # Before: every one of these files failed on every run ("year 11476 is out of range").
    first = backup_site_content(far_tree, container=container_name)
    assert (first.outcome, first.files_uploaded, first.files_failed) == ("completed", 3, 0)
    container = storage.container(container_name)
    stored = {b.name: b.metadata["mtime"] for b in container.list_blobs(include=["metadata"])}
    assert stored == {name: text for name, (_, text) in FAR_TIMES.items()}
    assert {name: parse_mtime(text) for name, text in stored.items()} == {n: t for n, (t, _) in FAR_TIMES.items()}

    again = backup_site_content(far_tree, container=container_name, refresh=True)  # compares with the blobs
    assert (again.files_unchanged, again.files_uploaded, again.bytes_uploaded, again.batches_from_checkpoint) == (
        3, 0, 0, 0)

    # rclone writes the same instants (a fixed 9-digit fraction) and they parse to the same ns.
    rclone_container = container_name + "-rc"
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_AZ_TYPE": "azureblob",
           "RCLONE_CONFIG_AZ_ACCOUNT": "devstoreaccount1", "RCLONE_CONFIG_AZ_KEY": AZURITE_KEY,
           "RCLONE_CONFIG_AZ_ENDPOINT": storage.blob_url}
    rclone = os.path.join(os.path.dirname(project_python), "rclone")
    subprocess.run([rclone, "mkdir", f"az:{rclone_container}"], env=env, check=True, capture_output=True)
    subprocess.run([rclone, "copy", far_tree, f"az:{rclone_container}"], env=env, check=True, capture_output=True)
    by_rclone = {b.name: b.metadata["mtime"] for b in storage.container(rclone_container).list_blobs(
        include=["metadata"])}
    assert by_rclone["far.txt"] == "11476-08-15T05:20:00.000000000Z"
    assert {name: parse_mtime(text) for name, text in by_rclone.items()} == {n: t for n, (t, _) in FAR_TIMES.items()}
