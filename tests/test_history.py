"""History on a real Azurite: run manifests, restoring the tree as an earlier run saw it,
the ransomware case, a killed run, the command line."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flows.backup_site_content import backup_site_content
from flows.restore_site_content import restore_site_content
from site_backup.destination import Destination
from site_backup.history import history_container, iso, list_runs, open_history_store, read_manifest
from tests.conftest import PROJECT, read_tree


def runs_of(container, prefix=""):
    return list_runs(open_history_store(Destination.checked(container, prefix)), prefix)


def tree_times(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def site(n_folders=4, per_folder=5):
    return {f"f{d}/page{i}.html": os.urandom(100 + 37 * i + d) for d in range(n_folders) for i in range(per_folder)}


def test_ransomware_first_run_restores_the_original_and_the_latest_the_damage(storage, checkpoints, container_name,
                                                                             make_tree, tmp_path):
    original = site()
    original["big/data.bin"] = os.urandom(9 * 2**20 + 1)  # a block upload
    root = make_tree(original)
    times = tree_times(root)
    backup_site_content(str(root), container=container_name)
    # the attack: every file overwritten with random bytes of the same size, a folder deleted
    for path in root.rglob("*"):
        if path.is_file():
            path.write_bytes(os.urandom(path.stat().st_size))
    import shutil
    shutil.rmtree(root / "f0")
    damaged, damaged_times = read_tree(root), tree_times(root)
    second = backup_site_content(str(root), container=container_name)
    assert second.files_changed == second.files_uploaded == len(damaged)
    runs = runs_of(container_name)
    assert [r.outcome for r in runs] == ["completed", "completed"]
    assert [r.files for r in runs] == [len(original), len(damaged)]

    before = tmp_path / "as-of-first"
    restored = restore_site_content(container_name, str(before), as_of=iso(runs[0].finished))
    assert restored.outcome == "completed" and restored.files_restored == len(original)
    assert read_tree(before) == original
    assert tree_times(before) == times
    latest = tmp_path / "latest"
    restore_site_content(container_name, str(latest), run_id=runs[1].run_id)
    assert read_tree(latest) == damaged and tree_times(latest) == damaged_times
    # recovery in place: over the damaged tree
    in_place = restore_site_content(container_name, str(root), run_id=runs[0].run_id, overwrite=True)
    assert in_place.outcome == "completed" and read_tree(root) == original and tree_times(root) == times


@pytest.mark.parametrize("prefix", ["", "sites/www"])
def test_each_of_three_runs_restores_exactly_its_state(storage, checkpoints, container_name, make_tree, tmp_path,
                                                       prefix):
    root = make_tree({"a.txt": b"one", "keep.txt": b"same", "gone/later.txt": b"deleted in run 3"})
    states = []
    for step in range(3):
        if step == 1:
            (root / "a.txt").write_bytes(b"two, longer")
            (root / "new.txt").write_bytes(b"created in run 2")
        if step == 2:
            (root / "a.txt").write_bytes(b"three")
            (root / "gone/later.txt").unlink()
            (root / "new.txt").write_bytes(b"changed in run 3")
        states.append((read_tree(root), tree_times(root)))
        backup_site_content(str(root), container=container_name, prefix=prefix)
    runs = runs_of(container_name, prefix)
    assert len(runs) == 3
    for i, run in enumerate(runs):
        target = tmp_path / f"run{i}"
        summary = restore_site_content(container_name, str(target), prefix=prefix, run_id=run.run_id[:8])
        assert summary.outcome == "completed"
        assert (read_tree(target), tree_times(target)) == states[i], f"run {i}"


def test_manifest_content_and_a_no_change_run_writes_one_manifest_and_nothing_else(storage, checkpoints,
                                                                                  container_name, make_tree):
    root = make_tree({"a.txt": b"a", "sub/b.txt": b"bb", os.fsdecode(b"bad\xffname.txt"): b"x"})
    backup_site_content(str(root), container=container_name)
    container = storage.container(container_name)
    blobs_before = {(b.name, b.etag) for b in container.list_blobs(include=["snapshots"])}
    again = backup_site_content(str(root), container=container_name)
    assert again.bytes_uploaded == 0
    assert {(b.name, b.etag) for b in container.list_blobs(include=["snapshots"])} == blobs_before
    history = storage.container(history_container(container_name))
    assert len(list(history.list_blobs())) == 2  # one manifest per run, nothing else (locks are gone)
    run = runs_of(container_name)[-1]
    lines = [json.loads(line) for line in gzip.decompress(history.download_blob(run.manifest).readall()).splitlines()]
    files = {line["p"]: line for line in lines[:-1]}
    assert set(files) == {"a.txt", "sub/b.txt", os.fsdecode(b"bad\xffname.txt")}
    assert files["sub/b.txt"]["s"] == 2 and files["sub/b.txt"]["t"] == (root / "sub/b.txt").stat().st_mtime_ns
    assert lines[-1]["run"]["run_id"] == run.run_id and lines[-1]["run"]["summary"]["files_total"] == 3
    # restore and verify of the backup container see no manifest: it is not there
    assert sorted(b.name for b in container.list_blobs()) == sorted(
        ["a.txt", "sub/b.txt", "bad\u201bFFname.txt"])


def test_dry_run_writes_no_manifest(storage, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"a"})
    backup_site_content(str(root), container=container_name, dry_run=True)
    assert runs_of(container_name) == []


def test_prefixes_keep_separate_histories(storage, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"a"})
    backup_site_content(str(root), container=container_name, prefix="x")
    backup_site_content(str(root), container=container_name, prefix="x/y")
    assert len(runs_of(container_name, "x")) == len(runs_of(container_name, "x/y")) == 1
    assert runs_of(container_name) == []


def test_a_killed_run_leaves_no_manifest_and_the_next_one_is_complete(storage, checkpoints, container_name,
                                                                      make_tree, tmp_path):
    files = {f"d{i % 20}/f{i:05d}.txt": os.urandom(2000) for i in range(3000)}
    root = make_tree(files)
    env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))
    args = [sys.executable, "flows/backup_site_content.py", str(root), "--container", container_name,
            "--files-per-batch", "100", "--files-in-flight", "2", "--parallel-batches", "1", "--no-progress"]
    proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    container = storage.container(container_name)
    deadline = time.monotonic() + 120
    try:
        while not container.exists() or len(list(container.list_blobs())) < 300:
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not upload 300 files"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    uploaded = len(list(container.list_blobs()))
    assert 300 <= uploaded < 3000, uploaded
    assert runs_of(container_name) == []
    history = storage.container(history_container(container_name))
    assert list(history.list_blobs(name_starts_with="runs/")) == []  # its lock blob may be there, leased
    result = subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = runs_of(container_name)
    assert run.files == 3000 and run.outcome == "completed"
    manifest = open_history_store(Destination.checked(container_name))
    paths = {line["p"] for line in read_manifest(manifest, run.manifest) if "p" in line}
    assert paths == set(files)


def test_command_line_lists_runs_and_restores_as_of(storage, checkpoints, container_name, make_tree, tmp_path):
    root = make_tree({"a.txt": b"old"})
    backup_site_content(str(root), container=container_name)
    (root / "a.txt").write_bytes(b"new!")
    backup_site_content(str(root), container=container_name)
    runs = runs_of(container_name)
    env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))
    cli = [sys.executable, "flows/restore_site_content.py", container_name]
    listed = subprocess.run(cli + [str(tmp_path / "t"), "--list"], cwd=PROJECT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == [r.run_id for r in runs]
    assert "completed" in listed.stdout and not (tmp_path / "t").exists()
    as_json = json.loads(subprocess.run(cli + ["--list", "--json"], cwd=PROJECT, env=env, capture_output=True,
                                        text=True, timeout=120).stdout)
    assert [r["run_id"] for r in as_json] == [r.run_id for r in runs] and as_json[0]["files"] == 1
    day = runs[0].finished.strftime("%Y-%m-%d")
    for bad, message in [(["--as-of", "yesterday"], "is not a date or time"),
                         (["--as-of", "2001-01-01"], "no backup finished by 2001-01-01T23:59:59.999999Z"),
                         (["--run", "zzzz"], "matches no run"),
                         (["--run", "a", "--as-of", day], "give one of them")]:
        done = subprocess.run(cli + [str(tmp_path / "bad")] + bad, cwd=PROJECT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, (bad, done.stderr)
    target = tmp_path / "first"
    done = subprocess.run(cli + [str(target), "--as-of", iso(runs[0].finished)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_tree(target) == {"a.txt": b"old"}


def test_rclone_check_still_finds_0_differences_with_snapshots_and_manifests(storage, checkpoints, container_name,
                                                                              make_tree):
    from tests.test_interop import rclone

    root = make_tree({"a.txt": b"one", "sub/b.txt": b"bee", ".site-backup/x": b"a user's own folder"})
    backup_site_content(str(root), container=container_name)
    (root / "a.txt").write_bytes(b"two")
    changed = backup_site_content(str(root), container=container_name)
    assert changed.files_changed == 1 and len(runs_of(container_name)) == 2
    check = rclone(storage, "check", str(root), f"az:{container_name}", "--download")
    assert check.returncode == 0 and "0 differences found" in check.stderr and "3 matching files" in check.stderr, \
        check.stderr[-2000:]
    listed = rclone(storage, "lsf", "-R", "--files-only", f"az:{container_name}")
    assert sorted(listed.stdout.split()) == [".site-backup/x", "a.txt", "sub/b.txt"]


def test_check_tells_whether_a_runs_content_is_still_stored(storage, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"one", "b.txt": b"bee"})
    backup_site_content(str(root), container=container_name)
    (root / "a.txt").write_bytes(b"two")
    backup_site_content(str(root), container=container_name)
    first = runs_of(container_name)[0]
    env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))
    cli = [sys.executable, "flows/restore_site_content.py", container_name, "--check", "--run", first.run_id]
    ok = subprocess.run(cli, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "2 files, 2 stored, 0 missing" in ok.stdout, ok.stderr
    container = storage.container(container_name)
    [snap] = [b for b in container.list_blobs(include=["snapshots"]) if b.snapshot]
    container.get_blob_client("a.txt", snapshot=snap.snapshot).delete_blob()
    gone = subprocess.run(cli, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert gone.returncode == 1 and "2 files, 1 stored, 1 missing" in gone.stdout and "a.txt" in gone.stdout
    bare = subprocess.run(cli[:4], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "--check needs --run or --as-of" in bare.stderr


def test_a_manifest_that_cannot_be_written_leaves_the_backup_complete(storage, checkpoints, container_name,
                                                                      make_tree, monkeypatch):
    from site_backup.history import ManifestWriter

    def refused(self, data):
        raise OSError("the history container is unreachable")

    monkeypatch.setattr(ManifestWriter, "_stage", refused)
    root = make_tree({"a.txt": b"a"})
    summary = backup_site_content(str(root), container=container_name)
    assert summary.outcome == "completed" and summary.files_uploaded == 1
    assert runs_of(container_name) == []
    history = storage.container(history_container(container_name))
    assert list(history.list_blobs()) == []  # the run's lock was released too
