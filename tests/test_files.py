"""The walk and the batching, as plain functions on real folders."""

from __future__ import annotations

import os
import socket

import pytest

from site_backup.errors import ConfigurationError
from site_backup.files import FileEntry, check_root, compile_patterns, list_batches, make_batches


def paths(listing):
    return [f.path for batch in listing.batches for f in batch]


def reasons(problems):
    return {p.path: p.reason for p in problems}


def test_lists_every_regular_file_with_size_and_mtime(make_tree):
    root = make_tree({"index.html": b"<html>", "css/site.css": b"body{}", "a/b/c/deep.txt": b"x" * 10, "empty": b""})
    listing = list_batches(str(root))
    assert sorted(paths(listing)) == ["a/b/c/deep.txt", "css/site.css", "empty", "index.html"]
    entry = next(f for b in listing.batches for f in b if f.path == "a/b/c/deep.txt")
    assert entry.size == 10 and entry.mtime_ns == os.stat(root / "a/b/c/deep.txt").st_mtime_ns
    assert listing.root == str(root) and listing.files == 4 and listing.bytes == 22


def test_walk_order_is_stable(make_tree):
    root = make_tree({f"d{i % 7}/f{i}.txt": b"x" for i in range(50)})
    assert paths(list_batches(str(root))) == paths(list_batches(str(root)))


def test_odd_names_are_kept_as_they_are(make_tree):
    names = ["sp ace.txt", "per%cent.txt", "hash#tag.txt", "what?.txt", "ünïcødé/日本語.txt", "a" * 200 + ".txt"]
    root = make_tree({n: b"1" for n in names})
    assert sorted(paths(list_batches(str(root)))) == sorted(names)


def test_symlinks_are_reported_not_followed_by_default(make_tree):
    root = make_tree({"real/file.txt": b"data"})
    os.symlink("real/file.txt", root / "link.txt")
    os.symlink("real", root / "dirlink")
    listing = list_batches(str(root))
    assert paths(listing) == ["real/file.txt"]
    skipped = reasons(listing.skipped)
    assert set(skipped) == {"link.txt", "dirlink"}
    assert "--follow-symlinks" in skipped["link.txt"]


def test_follow_symlinks_stays_inside_the_root_and_out_of_loops(make_tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"no")
    root = make_tree({"real/file.txt": b"data"})
    os.symlink("real/file.txt", root / "link.txt")
    os.symlink("real", root / "dirlink")
    os.symlink(str(outside), root / "escape")
    os.symlink("..", root / "real" / "up")  # a loop back to the root
    os.symlink("missing", root / "broken")
    listing = list_batches(str(root), follow_symlinks=True)
    assert sorted(paths(listing)) == ["dirlink/file.txt", "link.txt", "real/file.txt"]
    skipped = reasons(listing.skipped)
    assert "outside the root" in skipped["escape"]
    assert "broken" in skipped["broken"]
    assert "loop" in skipped["real/up"]


def test_special_files_are_skipped_without_being_opened(make_tree, tmp_path):
    root = make_tree({"ok.txt": b"1"})
    os.mkfifo(root / "pipe")  # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock_path = root / "s.sock"
    sock.bind(str(sock_path))
    try:
        listing = list_batches(str(root))
    finally:
        sock.close()
    assert paths(listing) == ["ok.txt"]
    skipped = reasons(listing.skipped)
    assert "FIFO" in skipped["pipe"] and "socket" in skipped["s.sock"]


def test_undecodable_names_are_listed_like_any_other(make_tree):
    root = make_tree({"ok.txt": b"1"})
    os.mkdir(os.fsencode(root) + b"/dir\xe9")
    for name in (b"/bad\xffname.txt", b"/dir\xe9/caf\xe9.txt"):
        fd = os.open(os.fsencode(root) + name, os.O_CREAT | os.O_WRONLY)
        os.close(fd)
    listing = list_batches(str(root), max_files=1)  # batch cut points hash every path
    assert sorted(os.fsencode(p) for p in paths(listing)) == [b"bad\xffname.txt", b"dir\xe9/caf\xe9.txt", b"ok.txt"]
    assert not listing.failed


def test_unreadable_folder_is_reported_and_the_rest_is_listed(make_tree, monkeypatch):
    root = make_tree({"open/a.txt": b"1", "locked/b.txt": b"2"})
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = list_batches(str(root))
    assert paths(listing) == ["open/a.txt"]
    assert reasons(listing.failed) == {"locked": "cannot read folder: Permission denied"}


@pytest.mark.parametrize(
    "patterns,expected",
    [
        (dict(include=["*.html"]), ["index.html", "blog/post.html"]),
        (dict(exclude=["*.log"]), ["index.html", "blog/post.html", "blog/img/a.png"]),
        (dict(exclude=["blog"]), ["index.html", "logs/x.log"]),
        (dict(exclude=["/blog/img/**"]), ["index.html", "blog/post.html", "logs/x.log"]),
        (dict(include=["blog/**"], exclude=["*.png"]), ["blog/post.html"]),
        (dict(include=["/*.html"]), ["index.html"]),
    ],
)
def test_include_and_exclude(make_tree, patterns, expected):
    root = make_tree({"index.html": b"", "blog/post.html": b"", "blog/img/a.png": b"", "logs/x.log": b""})
    listing = list_batches(str(root), **patterns)
    assert sorted(paths(listing)) == sorted(expected)
    assert listing.excluded >= 1


def test_glob_star_stays_in_one_folder():
    [pattern] = compile_patterns(["/a/*.txt"])
    assert pattern.match("a/x.txt") and not pattern.match("a/b/x.txt")
    with pytest.raises(ConfigurationError, match="empty pattern"):
        compile_patterns([""])


def files(n, size=1):
    return [FileEntry(f"dir/file-{i:06d}.txt", size, 0) for i in range(n)]


def test_batches_respect_file_and_byte_bounds():
    batches = list(make_batches(files(2500), max_files=1000, max_bytes=10**9))
    assert sum(map(len, batches)) == 2500 and max(map(len, batches)) <= 1000
    by_bytes = list(make_batches(files(100, size=30), max_files=1000, max_bytes=100))
    assert all(sum(f.size for f in b) <= 100 for b in by_bytes) and sum(map(len, by_bytes)) == 100
    big = list(make_batches([FileEntry("huge", 500, 0), FileEntry("small", 1, 0)], 1000, 100))
    assert [len(b) for b in big] == [1, 1]  # a file larger than the bound gets a batch of its own


def test_adding_a_file_changes_few_batches():
    before = list(make_batches(files(20000), max_files=500, max_bytes=10**9))
    more = files(20000)
    more.insert(37, FileEntry("dir/file-000036-new.txt", 1, 0))
    after = list(make_batches(more, max_files=500, max_bytes=10**9))
    unchanged = {tuple(b) for b in before} & {tuple(b) for b in after}
    assert len(before) >= 20
    assert len(after) - len(unchanged) <= 2


def test_check_root_explains_bad_roots(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="does not exist"):
        check_root(str(tmp_path / "nope"))
    with pytest.raises(ConfigurationError, match="is not a directory"):
        check_root(str(tmp_path / "file"))
    with pytest.raises(ConfigurationError, match="no root directory"):
        check_root("")
    assert check_root(str(tmp_path)) == str(tmp_path)


def test_batches_come_heaviest_first(make_tree):
    files = {f"small/{i:03d}.txt": b"x" for i in range(30)}
    files.update({"big/a.bin": b"y" * 3_000_000, "big/b.bin": b"z" * 3_000_000})
    listing = list_batches(str(make_tree(files)), max_files=10, max_bytes=2_000_000)
    weights = [sum(f.size + 256 * 1024 for f in b) for b in listing.batches]
    assert weights == sorted(weights, reverse=True)
    assert {f.path for f in listing.batches[0]} <= {"big/a.bin", "big/b.bin"}
    assert sorted(f.path for b in listing.batches for f in b) == sorted(files)
