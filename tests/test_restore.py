"""Restore: a round trip through Azurite, hostile names, damaged blobs, resume."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from flows.backup_site_content import backup_site_content
from flows.restore_site_content import restore_site_content
from site_backup.restore import BlobEntry, FolderEntry, plan_restore, restore_file, unsafe_name_reason
from site_backup.storage import RemoteBlob
from tests.memory_store import MemoryBlobStore
from tests.conftest import PROJECT, read_tree

ODD = {
    "index.html": b"<html>home</html>",
    "with space/and%percent #hash?.txt": b"odd",
    "ünïcødé/日本語/файл.txt": "текст".encode(),
    "emoji-\U0001f600.txt": b"smile",
    "new\nline and\ttab.txt": b"control characters are legal names",
    "empty.txt": b"",
    "deep/" + "/".join(["d"] * 40) + "/leaf.bin": os.urandom(5000),
    "big.bin": os.urandom(9 * 2**20 + 3),
}


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs/path", "a/./b", "a//b", "a/.", "..", "a/..",
                                  "nul\x00byte", "", "x" * 256, "\u2401" * 86, os.fsdecode(b"\xff" * 256)])
def test_unsafe_names_are_refused(name):
    assert unsafe_name_reason(name)


@pytest.mark.parametrize("name", ["a/b/c.txt", "..hidden", "a..b", "dot.", "space name", "日本語", "x" * 255,
                                  "new\nline", "tab\tname", "ctrl\x01char",
                                  "back\\slash", "back\\..\\slash", "C:\\windows\\x.txt", "del\x7f",
                                  os.fsdecode(b"caf\xe9"), os.fsdecode(b"\xff" * 255), "\u2401" * 85])
def test_ordinary_names_are_allowed(name):
    assert unsafe_name_reason(name) is None


def blob(data: bytes, mtime_ns=None, md5=True) -> RemoteBlob:
    return RemoteBlob(len(data), hashlib.md5(data).digest() if md5 else None, mtime_ns)


def test_plan_strips_the_prefix_and_refuses_hostile_names():
    plan = plan_restore([("p/ok.txt", blob(b"1")), ("p/../x", blob(b"2")), ("p/dir/", blob(b""))], "p", 10, 10**6)
    assert [e.path for b in plan.batches for e in b] == ["ok.txt"]
    assert {p.path for p in plan.refused} == {"../x"}
    assert plan.folders == [FolderEntry("dir", "p/dir/", None)]  # a folder marker, not a file


def entry(path, data, mtime_ns=1_600_000_000_123_456_789, md5=None):
    return BlobEntry(path, len(data), path, md5 if md5 is not None else hashlib.md5(data).digest(), mtime_ns)


def download_of(data: bytes):
    return lambda name: iter([data[:3], data[3:]])


def test_restore_file_writes_content_and_mtime_and_then_is_unchanged(tmp_path):
    e = entry("a/b.txt", b"hello world")
    assert restore_file(str(tmp_path), e, download_of(b"hello world")).status == "restored"
    assert (tmp_path / "a/b.txt").read_bytes() == b"hello world"
    assert os.stat(tmp_path / "a/b.txt").st_mtime_ns == e.mtime_ns
    assert restore_file(str(tmp_path), e, download_of(b"hello world")).status == "unchanged"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]  # no temporary file left


def test_damaged_blob_is_not_written(tmp_path):
    e = entry("a.txt", b"original", md5=hashlib.md5(b"original").digest())
    outcome = restore_file(str(tmp_path), e, download_of(b"tampered"))
    assert outcome.status == "failed" and "damaged" in outcome.reason
    assert list(tmp_path.iterdir()) == []


def test_different_existing_file_needs_overwrite(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"local edit")
    e = entry("a.txt", b"from backup")
    outcome = restore_file(str(tmp_path), e, download_of(b"from backup"))
    assert outcome.status == "failed" and "--overwrite" in outcome.reason
    assert (tmp_path / "a.txt").read_bytes() == b"local edit"
    assert restore_file(str(tmp_path), e, download_of(b"from backup"), overwrite=True).status == "restored"
    assert (tmp_path / "a.txt").read_bytes() == b"from backup"


def test_a_link_in_the_target_is_never_followed(tmp_path):
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    os.symlink(outside, target / "etc")
    outcome = restore_file(str(target), entry("etc/passwd", b"owned"), download_of(b"owned"))
    assert outcome.status == "failed" and "symbolic link" in outcome.reason
    assert list(outside.iterdir()) == []


def test_round_trip_byte_identical_with_mtimes(storage, checkpoints, container_name, make_tree, tmp_path):
    source = make_tree(ODD)
    os.utime(source / "index.html", ns=(1_500_000_000_987_654_321, 1_500_000_000_987_654_321))
    backup_site_content(str(source), container=container_name, prefix="site")
    target = tmp_path / "restored"
    summary = restore_site_content(container_name, str(target), prefix="site")
    assert summary.outcome == "completed" and summary.exit_code == 0
    assert summary.files_restored == len(ODD) and summary.bytes_restored == sum(map(len, ODD.values()))
    assert read_tree(target) == ODD
    for rel in ODD:
        assert os.stat(target / rel).st_mtime_ns == os.stat(source / rel).st_mtime_ns, rel
    assert sorted(os.listdir(target)) == sorted({rel.split("/")[0] for rel in ODD})  # nothing of the tool's
    again = restore_site_content(container_name, str(target), prefix="site")
    assert again.files_restored == 0 and again.files_unchanged == len(ODD)


def test_hostile_names_write_nothing_outside_the_target(storage, checkpoints, container_name, tmp_path):
    container = storage.container(container_name)
    container.create_container()
    # The service itself refuses names with '..' segments in the URL, but stores these;
    # Azurite turns the backslashes into '/', so that one arrives as 'back/../slash.txt'.
    hostile = ["/absolute.txt", "back\\..\\..\\slash.txt", "a//b.txt", "x//y/"]
    for name in hostile + ["good/one.txt", "good two.txt", ".../three dots"]:
        container.upload_blob(name, b"payload", overwrite=True)
    sandbox = tmp_path / "sandbox"
    target = sandbox / "target"
    summary = restore_site_content(container_name, str(target))
    assert summary.outcome == "incomplete" and summary.exit_code == 1
    assert summary.files_restored == 3 and summary.files_refused == len(hostile)
    assert read_tree(sandbox) == {"target/good/one.txt": b"payload", "target/good two.txt": b"payload",
                                  "target/.../three dots": b"payload"}
    assert not (tmp_path / "slash.txt").exists() and not os.path.exists("/absolute.txt")


def put_damaged(container, name: str, data: bytes) -> None:
    """A blob whose stored Content-MD5 does not match its content (Put Block List stores
    the MD5 it is given without checking it)."""
    from azure.storage.blob import BlobBlock, ContentSettings

    client = container.get_blob_client(name)
    block_id = base64.b64encode(b"block-0").decode()
    client.stage_block(block_id, data)
    client.commit_block_list([BlobBlock(block_id=block_id)],
                             content_settings=ContentSettings(content_md5=bytearray(hashlib.md5(b"other").digest())))


def test_damaged_blob_is_reported_and_a_rerun_resumes_from_checkpoints(storage, checkpoints, container_name,
                                                                       make_tree, tmp_path):
    files = {f"f{i:03d}.txt": f"file {i}".encode() for i in range(60)}
    backup_site_content(str(make_tree(files)), container=container_name)
    container = storage.container(container_name)
    put_damaged(container, "f030.txt", b"file 30")
    target = tmp_path / "restored"
    first = restore_site_content(container_name, str(target), files_per_batch=10)
    assert first.outcome == "incomplete" and [p.path for p in first.failed] == ["f030.txt"]
    assert "damaged" in first.failed[0].reason and not (target / "f030.txt").exists()
    container.upload_blob("f030.txt", b"file 30", overwrite=True)  # repaired
    second = restore_site_content(container_name, str(target), files_per_batch=10)
    assert second.outcome == "completed" and second.files_restored == 1
    assert 1 <= second.batches_from_checkpoint < second.batches
    assert read_tree(target) == files


def test_restore_command_line(storage, prefect_server, checkpoints, container_name, make_tree, tmp_path):
    backup_site_content(str(make_tree({"a.txt": b"A", "b/c.txt": b"C"})), container=container_name)
    env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=storage.connection_string, PREFECT_API_URL=prefect_server)
    script = str(PROJECT / "flows" / "restore_site_content.py")
    done = subprocess.run([sys.executable, script, container_name, str(tmp_path / "out"), "--json"], env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["files_restored"] == 2
    assert read_tree(tmp_path / "out") == {"a.txt": b"A", "b/c.txt": b"C"}
    missing = subprocess.run([sys.executable, script, "no-such-container", str(tmp_path / "x")], env=env,
                             capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "file").write_text("x")
    not_a_dir = subprocess.run([sys.executable, script, container_name, str(tmp_path / "file")], env=env,
                               capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert not_a_dir.returncode == 2 and "is not a folder" in not_a_dir.stderr


def test_dot_dot_names_from_any_listing_are_refused_and_neighbours_restored(tmp_path):
    from site_backup.restore import restore_batch

    store = MemoryBlobStore()  # its listing may hold names the real service refuses in a URL
    for name in ["../../escaped.txt", "ok/../../../escaped2.txt", "fine.txt", "C:\\windows\\x.txt"]:
        store.put(name, b"data", md5=hashlib.md5(b"data").digest(), content_type="text/plain", metadata={})
    plan = plan_restore(store.list(""), "", 100, 10**6)
    target = tmp_path / "a" / "target"
    target.mkdir(parents=True)
    outcomes = restore_batch(str(target), [e for b in plan.batches for e in b], store.read)
    # A backslash is an ordinary character in a Linux file name: that blob is one file.
    assert [(o.path, o.status) for o in outcomes] == [("C:\\windows\\x.txt", "restored"), ("fine.txt", "restored")]
    assert len(plan.refused) == 2
    assert read_tree(tmp_path) == {"a/target/fine.txt": b"data", "a/target/C:\\windows\\x.txt": b"data"}


# ---- issue 11: the restore keeps its progress outside the target; long names; far times ----

OLD_MARKER = ".site-backup-restore-in-progress"  # where restores kept their id before


def test_a_file_named_like_the_old_marker_is_restored_like_any_other(storage, checkpoints, container_name,
                                                                    make_tree, tmp_path):
    files = {OLD_MARKER: b"my own notes", "a.txt": b"A"}
    backup_site_content(str(make_tree(files)), container=container_name)
    target = tmp_path / "restored"
    first = restore_site_content(container_name, str(target), overwrite=True)
    assert first.outcome == "completed" and first.files_restored == 2
    assert read_tree(target) == files
    again = restore_site_content(container_name, str(target), overwrite=True)
    assert again.outcome == "completed" and again.files_unchanged == 2
    assert read_tree(target) == files


def test_a_link_in_the_target_is_never_written_through_or_read(storage, checkpoints, container_name, make_tree,
                                                               tmp_path):
    backup_site_content(str(make_tree({"a.txt": b"A"})), container=container_name)
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    os.symlink(outside / "stolen", target / OLD_MARKER)
    os.symlink("/dev/zero", target / "zero")
    summary = restore_site_content(container_name, str(target))
    assert summary.outcome == "completed" and summary.files_restored == 1
    assert list(outside.iterdir()) == []
    assert os.readlink(target / OLD_MARKER) == str(outside / "stolen")


def test_a_fifo_in_the_target_does_not_hang_the_restore(storage, checkpoints, container_name, make_tree, tmp_path):
    import threading
    import time

    backup_site_content(str(make_tree({"a.txt": b"A"})), container=container_name)
    target = tmp_path / "target"
    target.mkdir()
    os.mkfifo(target / OLD_MARKER)
    results = []
    worker = threading.Thread(target=lambda: results.append(restore_site_content(container_name, str(target))),
                              daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    if hung:  # release a reader blocked on the FIFO so the test ends instead of hanging
        fd = os.open(target / OLD_MARKER, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"x\n")
        os.close(fd)
        worker.join(60)
    assert not hung, f"the restore blocked on a FIFO in the target for {time.monotonic() - started:.0f} s"
    assert results[0].outcome == "completed" and (target / "a.txt").read_bytes() == b"A"
    assert stat.S_ISFIFO(os.lstat(target / OLD_MARKER).st_mode)


def test_a_completed_restore_is_not_trusted_by_the_next_one(storage, checkpoints, container_name, make_tree,
                                                            tmp_path):
    files = {f"f{i}.txt": f"file {i}".encode() for i in range(5)}
    backup_site_content(str(make_tree(files)), container=container_name)
    target = tmp_path / "restored"
    assert restore_site_content(container_name, str(target)).outcome == "completed"
    assert list(target.iterdir()) and sorted(p.name for p in target.iterdir()) == sorted(files)
    (target / "f3.txt").unlink()  # lost after the restore: the next restore must bring it back
    again = restore_site_content(container_name, str(target))
    assert again.batches_from_checkpoint == 0 and again.files_restored == 1 and again.files_unchanged == 4
    assert read_tree(target) == files


@pytest.mark.parametrize("name", ["漢" * 85, "é" * 127, "a" * 251 + "\U0001f600", "a" * 199 + "漢" * 18])
def test_names_up_to_255_bytes_restore(tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    e = entry(name, b"long name")
    outcome = restore_file(str(tmp_path), e, download_of(b"long name"))
    assert outcome.status == "restored", outcome.reason
    assert os.listdir(os.fsencode(str(tmp_path))) == [os.fsencode(name)]


@pytest.mark.parametrize("mtime_ns", [300_000_000_000 * 10**9 + 123, 10**30, -(10**30)])
def test_times_out_of_range_still_restore_the_file(tmp_path, mtime_ns):
    e = entry("far.txt", b"far", mtime_ns=mtime_ns)
    outcome = restore_file(str(tmp_path), e, download_of(b"far"))
    assert outcome.status == "restored", outcome.reason
    assert (tmp_path / "far.txt").read_bytes() == b"far"
    mtime = os.stat(tmp_path / "far.txt").st_mtime_ns
    assert (mtime > 10**18) if mtime_ns > 0 else (mtime < 0)  # as far as the file system goes


def test_temporary_names_are_cut_by_bytes_between_characters():
    from site_backup.restore import _cut

    assert _cut("a" * 199 + "漢" * 18, 200) == "a" * 199
    undecodable = "é" * 60 + "\udcff" * 90  # 120 + 90 bytes on disk
    assert len(os.fsencode(_cut(undecodable, 200))) == 200 and _cut(undecodable, 200).endswith("\udcff")
    assert _cut("short", 200) == "short"


# ---- issue 12: other tools' containers: folder markers, their times, Last-Modified ----

def test_stored_time_is_mtime_else_azcopys_modtime():
    from site_backup.blob_metadata import is_folder_marker, stored_mtime

    assert stored_mtime({"mtime": "2021-03-04T05:06:07.123456789Z", "modtime": "5"}) == 1614834367123456789
    assert stored_mtime({"modtime": "1614834367123456789"}) == 1614834367123456789  # AzCopy 10.32's format
    assert stored_mtime({"ModTime": "1614834367123456789"}) == 1614834367123456789  # names are case-insensitive
    assert stored_mtime({"mtime": "garbage", "modtime": "12"}) == 12
    assert stored_mtime({}) is None and stored_mtime(None) is None and stored_mtime({"modtime": "x1"}) is None
    assert is_folder_marker({"hdi_isfolder": "true"}) and is_folder_marker({"Hdi_IsFolder": "True"})
    assert not is_folder_marker({"hdi_isfolder": "false"}) and not is_folder_marker({})


def test_plan_uses_the_stored_time_else_last_modified_and_makes_folders_of_markers():
    blobs = [("p/a.txt", RemoteBlob(1, None, 11, last_modified_ns=22)),
             ("p/b.txt", RemoteBlob(1, None, None, last_modified_ns=22)),
             ("p/dir", RemoteBlob(0, None, 33, folder=True, last_modified_ns=44)),
             ("p/bare/", RemoteBlob(0, None, None, last_modified_ns=44)),
             ("p/full/", RemoteBlob(3, None, None)),
             ("p/odd", RemoteBlob(3, None, None, folder=True)),
             ("p/", RemoteBlob(0, None, None))]  # the prefix's own marker: the target itself
    plan = plan_restore(blobs, "p", 10, 10**6)
    assert [(e.path, e.mtime_ns) for b in plan.batches for e in b] == [("a.txt", 11), ("b.txt", 22)]
    assert plan.folders == [FolderEntry("dir", "p/dir", 33), FolderEntry("bare", "p/bare/", None)]
    assert sorted(p.path for p in plan.refused) == ["full/", "odd"]  # markers with content: never guessed


def test_folder_markers_become_folders_with_their_times(storage, checkpoints, container_name, tmp_path):
    """Markers in every form: AzCopy's (hdi_isfolder, modtime), a name ending in '/', one
    with our `mtime`; a file with no stored time gets the blob's Last-Modified."""
    container = storage.container(container_name)
    container.create_container()
    folder_meta = {"hdi_isfolder": "true", "modtime": "1500000000123456789"}
    container.upload_blob("site/docs", b"", metadata=folder_meta)
    container.upload_blob("site/docs/a.txt", b"A", metadata={"modtime": "1600000000987654321"})
    container.upload_blob("site/docs/empty", b"", metadata=dict(folder_meta, modtime="1400000000000000001"))
    container.upload_blob("site/slash/", b"", metadata={"mtime": "2020-01-02T03:04:05.5Z"})
    container.upload_blob("site/plain.txt", b"no metadata")
    written = container.get_blob_client("site/plain.txt").get_blob_properties().last_modified
    target = tmp_path / "restored"
    summary = restore_site_content(container_name, str(target), prefix="site")
    assert summary.outcome == "completed" and summary.files_restored == 2, summary.failed + summary.refused
    assert read_tree(target) == {"docs/a.txt": b"A", "plain.txt": b"no metadata"}
    assert (target / "docs/empty").is_dir() and (target / "slash").is_dir()
    assert os.stat(target / "docs").st_mtime_ns == 1500000000123456789
    assert os.stat(target / "docs/empty").st_mtime_ns == 1400000000000000001
    assert os.stat(target / "docs/a.txt").st_mtime_ns == 1600000000987654321
    assert os.stat(target / "slash").st_mtime_ns == 1577934245500000000
    assert os.stat(target / "plain.txt").st_mtime_ns == int(written.timestamp()) * 10**9
    again = restore_site_content(container_name, str(target), prefix="site")
    assert again.outcome == "completed" and again.files_unchanged == 2


def test_a_folder_marker_where_a_file_stands_is_reported(tmp_path):
    from site_backup.restore import restore_folders

    (tmp_path / "taken").write_bytes(b"a file")
    os.symlink(tmp_path, tmp_path / "link")
    result = restore_folders(str(tmp_path), [FolderEntry("taken", "taken", 1), FolderEntry("link/x", "link/x", 1),
                                             FolderEntry("new/deep", "new/deep", 10**18)])
    assert sorted(p.path for p in result.failed) == ["link/x/", "taken/"]
    assert (tmp_path / "taken").read_bytes() == b"a file" and not (tmp_path / "x").exists()
    assert os.stat(tmp_path / "new/deep").st_mtime_ns == 10**18


# ---- issue 21: one restore at a time into a target ----


def _restore_env(prefect_server, checkpoints, connection_string):
    return dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=connection_string, PREFECT_API_URL=prefect_server,
                PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))


def _two_runs(container_name, make_tree):
    """Two backup runs of one tree: the second changed a file and added one."""
    from tests.test_history import runs_of

    first = {"a.txt": b"first a", "b/b.txt": b"bee"}
    root = make_tree(first)
    backup_site_content(str(root), container=container_name)
    (root / "a.txt").write_bytes(b"second a, longer")
    (root / "c.txt").write_bytes(b"new in the second run")
    backup_site_content(str(root), container=container_name)
    second = read_tree(root)
    runs = runs_of(container_name)
    return (runs[0].run_id, first), (runs[1].run_id, second)


def _held_restore(proxy, container_name, target, run_id, env):
    """A restore whose read of the run's manifest the proxy holds: it has taken the target
    (the lock comes before the plan) and written nothing into it yet."""
    from site_backup.history import history_container
    from tests.conftest import start_process

    history = history_container(container_name)
    proxy.gate = lambda method, where, query, headers: (method == "GET" and where.startswith(f"{history}/runs/")
                                                       and "comp" not in query)
    script = str(PROJECT / "flows" / "restore_site_content.py")
    first = start_process([sys.executable, script, container_name, str(target), "--run", run_id, "--json"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    from tests.test_durability import wait_until

    wait_until(lambda: proxy.held.is_set() or first.poll() is not None, 240, "the first restore to read its run")
    assert first.poll() is None, first.communicate()[1][-3000:]
    return first


def test_a_second_restore_into_the_same_target_is_refused_while_the_first_runs(storage, prefect_server, checkpoints,
                                                                              container_name, make_tree, tmp_path):
    """Two different runs restored into one folder at once used to both exit 0 with a tree
    that matched neither; now the second is refused (exit 2) and the first ends whole."""
    from site_backup.credentials import azurite_connection_string
    from tests.conftest import stop_process
    from tests.faultproxy import FaultProxy

    (run_a, tree_a), (run_b, _) = _two_runs(container_name, make_tree)
    target = tmp_path / "target"
    script = str(PROJECT / "flows" / "restore_site_content.py")
    with FaultProxy(storage.port) as proxy:
        via = azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")
        first = _held_restore(proxy, container_name, target, run_a, _restore_env(prefect_server, checkpoints, via))
        try:
            second = subprocess.run([sys.executable, script, container_name, str(target), "--run", run_b],
                                    env=_restore_env(prefect_server, checkpoints, storage.connection_string),
                                    capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"another restore is writing into {target.resolve()} now: wait for it to end" in second.stderr
            proxy.release()
            out, err = first.communicate(timeout=300)
        finally:
            stop_process(first)
    assert first.returncode == 0, err[-3000:]
    assert json.loads(out)["files_restored"] == 2
    assert read_tree(target) == tree_a and sorted(os.listdir(target)) == ["a.txt", "b"]  # no lock file left


def test_a_killed_restore_leaves_the_target_free(storage, prefect_server, checkpoints, container_name, make_tree,
                                                 tmp_path):
    """The lock is the kernel's (flock on the folder): a restore killed with SIGKILL holds
    the target no longer, and no file of the lock is left in it."""
    import signal

    from site_backup.credentials import azurite_connection_string
    from tests.conftest import stop_process
    from tests.faultproxy import FaultProxy

    (run_a, _), (run_b, tree_b) = _two_runs(container_name, make_tree)
    target = tmp_path / "target"
    with FaultProxy(storage.port) as proxy:
        via = azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")
        first = _held_restore(proxy, container_name, target, run_a, _restore_env(prefect_server, checkpoints, via))
        try:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
        finally:
            stop_process(first)
    assert os.listdir(target) == []
    script = str(PROJECT / "flows" / "restore_site_content.py")
    after = subprocess.run([sys.executable, script, container_name, str(target), "--run", run_b, "--json"],
                           env=_restore_env(prefect_server, checkpoints, storage.connection_string),
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert after.returncode == 0, after.stderr[-3000:]
    assert read_tree(target) == tree_b and sorted(os.listdir(target)) == ["a.txt", "b", "c.txt"]


def test_the_target_lock_refuses_any_path_to_the_same_folder_and_ends_with_its_holder(tmp_path):
    from site_backup.errors import ConfigurationError
    from site_backup.restore_target import exclusive_target

    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with exclusive_target(str(tmp_path / "real")) as unguarded:
        assert unguarded == ""
        with pytest.raises(ConfigurationError, match="another restore is writing into .*alias now"):
            with exclusive_target(str(tmp_path / "alias")):
                pass
    with exclusive_target(str(tmp_path / "alias")):  # released with the first
        pass
    assert os.listdir(tmp_path / "real") == []
