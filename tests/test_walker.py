"""The walk in a child process gives exactly what the walk in this process gives: the same
batches (so the same checkpoint keys) and the same problems, on hostile trees too."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from site_backup.files import open_listing, stream_batches
import site_backup.walker as walker
from site_backup.shards import Shard
from site_backup.walker import ChildWalk, WalkFailed


def both_ways(root, **options):
    here, there = open_listing(str(root)), open_listing(str(root))
    batches_here = list(stream_batches(here, **options))
    batches_there = list(ChildWalk(there, **options))
    return (here, batches_here), (there, batches_there)


def described(listing):
    return (listing.file_count, listing.byte_count, listing.batch_count, sorted(listing.skipped),
            sorted(listing.failed), listing.excluded, listing.walking)


def hostile_tree(root):
    names = ["back\\slash.txt", "ctl\x01.txt", "new\nline", "dot-end.", "日本語.txt", "sp ace/in.txt",
             "skip/me.tmp", "keep/me.html", *[f"many/f{i:03d}.txt" for i in range(120)]]
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode("utf-8", "surrogateescape") * 3)
    (root / os.fsdecode(b"latin1-caf\xe9.txt")).write_bytes(b"cafe")
    (root / "link-in").symlink_to(root / "keep/me.html")
    (root / "link-out").symlink_to("/etc/hostname")
    (root / "loop").symlink_to(root)
    os.mkfifo(root / "pipe")
    return root


@pytest.mark.parametrize("options", [
    {},
    {"max_files": 7},
    {"max_files": 5, "max_bytes": 200, "follow_symlinks": True},
    {"include": ["*.txt", "/keep/**"], "exclude": ["skip/**", "many/f0*"]},
    {"max_files": 3, "shard": Shard.parse("1/3")},
    {"shard": Shard.parse("0/2", "top-level-folder")},
])
def test_the_child_walks_as_this_process_does(tmp_path, options):
    root = hostile_tree(tmp_path / "site")
    (here, batches_here), (there, batches_there) = both_ways(root, **options)
    assert batches_there == batches_here and len(batches_here) >= 1
    assert [len(b) for b in batches_there] == [len(b) for b in batches_here]
    assert described(there) == described(here)
    assert here.skipped or options.get("shard")  # the tree's links and the FIFO are reported


def test_a_folder_that_cannot_be_read_is_reported_by_the_child(tmp_path, monkeypatch):
    """Tests run as root, where chmod 000 stops no read: the child is made to fail on one
    folder (by a sitecustomize module on its path) as it would for another user."""
    root = tmp_path / "site"
    for name in ("a.txt", "locked/in.txt", "z/after.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "real = os.scandir\n"
        "def scandir(path='.'):\n"
        "    if isinstance(path, str) and path.endswith('/locked'):\n"
        "        raise PermissionError(13, 'Permission denied', path)\n"
        "    return real(path)\n"
        "os.scandir = scandir\n")
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    listing = open_listing(str(root))
    batches = list(ChildWalk(listing))
    assert [f.path for b in batches for f in b] == ["a.txt", "z/after.txt"]
    assert listing.failed == [("locked", "cannot read folder: Permission denied")]


def test_an_error_in_the_child_is_raised_here(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    listing = open_listing(str(root))
    root.rmdir()  # gone between the check and the walk
    with pytest.raises(FileNotFoundError):
        list(ChildWalk(listing))


def test_a_child_that_dies_fails_the_walk_with_its_exit_code(tmp_path, monkeypatch):
    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\nexit 3\n")
    dying.chmod(0o755)
    monkeypatch.setattr(walker.sys, "executable", str(dying))
    root = tmp_path / "site"
    root.mkdir()
    with pytest.raises(WalkFailed, match=r"ended unexpectedly \(exit code 3\)"):
        list(ChildWalk(open_listing(str(root))))


def children_walking() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"site_backup.walker" in cmdline:
            found.append(int(pid))
    return found


def test_stopping_early_ends_the_child(tmp_path, monkeypatch):
    monkeypatch.setattr(walker, "PIPE_BYTES", 4096)  # the child blocks on the full pipe, unfinished
    root = tmp_path / "site"
    for i in range(3000):
        (root / f"d{i // 100:02d}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 100:02d}/f{i}.txt").write_bytes(b"x")
    walk = iter(ChildWalk(open_listing(str(root)), max_files=10))
    next(walk)
    assert len(children_walking()) == 1  # blocked on the full pipe, not finished
    walk.close()
    deadline = time.monotonic() + 5
    while children_walking() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children_walking() == []


def test_a_walk_closed_before_its_first_batch_ends_the_child(tmp_path, monkeypatch):
    """The child starts at once, while the flow prepares storage: a run that fails there ends it."""
    monkeypatch.setattr(walker, "PIPE_BYTES", 4096)
    root = tmp_path / "site"
    for i in range(3000):
        (root / f"d{i // 100:02d}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 100:02d}/f{i}.txt").write_bytes(b"x")
    walk = ChildWalk(open_listing(str(root)), max_files=10)
    readable, _, _ = select.select([walk.child.stdout], [], [], 30)
    assert readable, "the child sent no batch within 30 s"  # it has started, and fills the pipe
    assert len(children_walking()) == 1
    walk.close()
    assert children_walking() == []


def test_the_child_does_not_import_prefect(tmp_path, monkeypatch):
    """Its start costs a fresh interpreter and the walk's own modules, nothing more."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(tmp_path / 'modules')!r}, 'w').write('\\n'.join(sys.modules)))\n")
    monkeypatch.setenv("PYTHONPATH", str(probe))
    assert len(list(ChildWalk(open_listing(str(root))))) == 1
    modules = (tmp_path / "modules").read_text().split()
    assert "site_backup.files" in modules
    assert not [m for m in modules if m.split(".")[0] in ("prefect", "azure", "pydantic")]


def test_a_stalled_child_ends_with_its_parent_even_when_that_is_killed(tmp_path):
    """A parent killed with SIGKILL closes no pipe in time for a child stalled in one folder
    (a hung network mount): the child asked the kernel to end it with its parent."""
    root = tmp_path / "site"
    (root / "stall").mkdir(parents=True)
    (root / "stall/a.txt").write_bytes(b"a")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, time\n"
        "real = os.scandir\n"
        "def scandir(path='.'):\n"
        "    if isinstance(path, str) and path.endswith('/stall'):\n"
        f"        open({str(tmp_path / 'stalled')!r}, 'w').close()\n"
        "        time.sleep(120)\n"
        "    return real(path)\n"
        "os.scandir = scandir\n")
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from site_backup.files import open_listing; "
         "from site_backup.walker import ChildWalk; w = ChildWalk(open_listing(sys.argv[1])); "
         "print(w.child.pid, flush=True); list(w)", str(root)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(hooks)})
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not (tmp_path / "stalled").exists():  # the child is in the stalled folder now
            assert time.monotonic() < deadline and parent.poll() is None, "the child never reached the folder"
            time.sleep(0.02)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
