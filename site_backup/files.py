"""Walk a directory tree into batches of files, reporting what cannot be backed up."""

from __future__ import annotations

import os
import stat
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Sequence
from typing import Iterable, Iterator, NamedTuple

from .errors import ConfigurationError
from .globs import compile_patterns, matches
from .units import MiB
from .shards import Shard


class FileEntry(NamedTuple):
    """A regular file to back up, identified by what the checkpoint key needs."""

    path: str  # relative to the root, "/"-separated
    size: int
    mtime_ns: int


class Problem(NamedTuple):
    """A file that was skipped or failed, with the reason a person can act on."""

    path: str
    reason: str


class Batch(Sequence):
    """The unit of work of one task: a sequence of files (or blobs). Deliberately not a
    list: Prefect walks list and tuple parameters item by item looking for futures, which
    cost seconds per 100,000 files; this it passes along as one value."""

    def __init__(self, items: Iterable = (), parts: int = 1):
        self.items = tuple(items)
        self.parts = parts  # how many batches of the walk this one joins (see `joined`)

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self):  # Sequence's own __iter__ calls __getitem__ once per item, in Python
        return iter(self.items)

    @cached_property
    def bytes(self) -> int:
        """The size of every item together."""
        return sum(item.size for item in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Batch) and self.items == other.items

    def __repr__(self) -> str:
        return f"Batch({len(self.items)} items)"


@dataclass
class FileListing:
    """The result of walking a tree: the work, and what was left out and why. A streamed
    walk hands its batches on and keeps none (`batches` stays empty); the counts grow as
    batches are cut, and `walking` is True until the walk has ended."""

    root: str = ""
    root_id: tuple[int, int] | None = None  # (device, inode) of the root when it was listed
    batches: list[Batch] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    excluded: int = 0
    file_count: int = 0
    byte_count: int = 0
    batch_count: int = 0
    walking: bool = False

    def count(self, batch: Batch) -> None:
        """Count one batch the walk has cut (a streamed listing keeps only the counts)."""
        self.file_count += len(batch)
        self.byte_count += batch.bytes
        self.batch_count += 1

    @property
    def files(self) -> int:
        return self.file_count

    @property
    def bytes(self) -> int:
        return self.byte_count


def display_path(path: str) -> str:
    """A path safe to print and to put in JSON: undecodable bytes become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_SPECIAL_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def special_file_reason(mode: int) -> str:
    kind = _SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return f"special file ({kind}): only regular files are backed up"


def walk_tree(
    root: str,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    follow_symlinks: bool = False,
    listing: FileListing | None = None,
    shard: Shard | None = None,
) -> Iterator[FileEntry]:
    """Yield every regular file under `root` in a stable order, recording in `listing`
    what was skipped (links, special files), failed (unreadable folders or files) or
    excluded. Links are followed only on request, never out of the root or in a loop;
    special files are never opened. With a `shard`, only that shard's files and problems
    are yielded and recorded (each one belongs to exactly one shard)."""
    listing = listing if listing is not None else FileListing()
    elsewhere = FileListing(skipped=_Dropped(), failed=_Dropped())  # other shards' problems: never recorded
    includes, excludes = compile_patterns(include), compile_patterns(exclude)
    root_real = os.path.realpath(root)
    root_stat = os.stat(root_real)
    # Each stack item is (relative dir, absolute dir, (dev, inode) of the dirs above it).
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        ("", root_real, frozenset({(root_stat.st_dev, root_stat.st_ino)}))
    ]
    while stack:
        rel_dir, abs_dir, ancestors = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if shard is None or shard.owns(rel_dir):
                listing.failed.append(
                    Problem(display_path(rel_dir or "."), f"cannot read folder: {exc.strerror or exc}")
                )
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            ours = shard is None or shard.owns(rel)
            if not ours and not shard.walks_other_folders:
                continue
            record = listing if ours else elsewhere
            found = _classify(entry, rel, root_real, ancestors, follow_symlinks, record)
            if found is None:
                continue
            if not isinstance(found, FileEntry):  # a folder to descend into
                if excludes and (matches(excludes, rel) or matches(excludes, rel + "/")):
                    record.excluded += 1
                    continue
                subdirs.append((rel, *found))
                continue
            if not ours:
                continue
            if (includes and not matches(includes, rel)) or (excludes and matches(excludes, rel)):
                listing.excluded += 1
                continue
            yield found
        # Reversed so the first folder in name order is walked first.
        for rel, abs_path, key in reversed(subdirs):
            stack.append((rel, abs_path, ancestors | {key}))


class _Dropped(list):
    """A list that keeps nothing: where another shard's problems go."""

    def append(self, item) -> None:
        pass


def _classify(entry, rel, root_real, ancestors, follow_symlinks, listing):
    """Return a FileEntry, (absolute dir, (dev, inode)) for a folder, or None when the
    entry was reported (skipped or failed) instead."""
    try:
        if entry.is_symlink():
            if not follow_symlinks:
                listing.skipped.append(
                    Problem(display_path(rel), "symbolic link, not followed (use --follow-symlinks to follow links inside the root)")
                )
                return None
            return _follow_link(entry, rel, root_real, ancestors, listing)
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        listing.skipped.append(Problem(display_path(rel), "vanished while the tree was being listed"))
        return None
    except OSError as exc:
        listing.failed.append(Problem(display_path(rel), f"cannot read file information: {exc.strerror or exc}"))
        return None
    return _from_stat(entry.path, rel, st, listing)


def _from_stat(abs_path, rel, st, listing):
    if stat.S_ISDIR(st.st_mode):
        return abs_path, (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode):
        return FileEntry(rel, st.st_size, st.st_mtime_ns)
    listing.skipped.append(Problem(display_path(rel), special_file_reason(st.st_mode)))
    return None


def _follow_link(entry, rel, root_real, ancestors, listing):
    target = os.path.realpath(entry.path)
    if os.path.commonpath([root_real, target]) != root_real:
        listing.skipped.append(Problem(display_path(rel), "symbolic link to a place outside the root, not followed"))
        return None
    try:
        st = os.stat(target)
    except OSError:
        listing.skipped.append(Problem(display_path(rel), "broken symbolic link (its target does not exist)"))
        return None
    if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in ancestors:
        listing.skipped.append(Problem(display_path(rel), "symbolic link loop (points to a folder above it), not followed"))
        return None
    if stat.S_ISDIR(st.st_mode):
        # Descend through the link's own path so relative names keep the link's name.
        return entry.path, (st.st_dev, st.st_ino)
    return _from_stat(entry.path, rel, st, listing)


def make_batches(files: Iterable[FileEntry], max_files: int, max_bytes: int) -> Iterator[list[FileEntry]]:
    """Group files into batches of at most `max_files` files and about `max_bytes` bytes.

    Besides those bounds, a batch also ends after any file whose path hashes to 0 modulo
    `max_files`. Those cut points depend only on the path, so adding or changing one file
    changes one batch (and one checkpoint key) instead of shifting every later batch."""
    if max_files < 1 or max_bytes < 1:
        raise ValueError("batch limits must be at least 1 file and 1 byte")
    batch: list[FileEntry] = []
    size = 0
    for f in files:
        if batch and size + f.size > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += f.size
        # A name that is not UTF-8 arrives with surrogate escapes: hash its bytes.
        natural_cut = zlib.crc32(f.path.encode("utf-8", "surrogateescape")) % max_files == 0
        if natural_cut or len(batch) >= max_files:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def check_root(root: str) -> str:
    """The absolute path of `root` if it is a readable directory, else a ConfigurationError
    that says what is wrong and what to do."""
    if not isinstance(root, str) or not root.strip():
        raise ConfigurationError("no root directory given: pass the folder to back up, e.g. ./sample-site")
    path = os.path.abspath(os.path.expanduser(root))
    if not os.path.exists(path):
        raise ConfigurationError(
            f"root directory {root!r} does not exist: check the path (it is read on the machine that runs the flow)"
        )
    if not os.path.isdir(path):
        raise ConfigurationError(f"root {root!r} is not a directory: give the folder that holds the files to back up")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise ConfigurationError(
            f"root directory {root!r} cannot be read ({exc.strerror or exc}): run as a user that may read it"
        ) from None
    return path


def root_identity(root: str) -> tuple[int, int]:
    """(device, inode) of the root folder: another value later means it was replaced or unmounted."""
    st = os.stat(root)
    return st.st_dev, st.st_ino


def root_problem(root: str, root_id: tuple[int, int] | None) -> str | None:
    """Why the root listed at the start can no longer be read (gone, unreadable, replaced or
    unmounted), or None when it is still there. A file vanishing is the file's business;
    the root vanishing means the backup cannot be completed."""
    try:
        now = root_identity(root)
        with os.scandir(root):
            pass
    except OSError as exc:
        return f"the root directory {display_path(root)} vanished or became unreadable during the run " \
               f"({exc.strerror or exc}): check the disk or mount, then run the backup again"
    if root_id is not None and now != root_id:
        return f"the root directory {display_path(root)} was replaced or unmounted during the run: " \
               f"check the disk or mount, then run the backup again"
    return None


def open_listing(root: str) -> FileListing:
    """An empty listing of `root` (checked, absolute) with the root's identity, before the walk."""
    listing = FileListing(root=check_root(root))
    listing.root_id = root_identity(listing.root)
    return listing


def stream_batches(
    listing: FileListing,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    follow_symlinks: bool = False,
    max_files: int = 1000,
    max_bytes: int = 256 * MiB,
    shard: Shard | None = None,
) -> Iterator[Batch]:
    """Walk `listing.root` and yield each batch as soon as it is cut, in walk order,
    counting it in `listing` (which keeps none); what was skipped or failed is recorded
    there too; only the files of `shard`, if given. The cut points are those of `make_batches`, so they do not depend on how
    far the walk had got."""
    listing.walking = True
    files = walk_tree(listing.root, include=include, exclude=exclude, follow_symlinks=follow_symlinks, listing=listing,
                      shard=shard)
    for files_of_batch in make_batches(files, max_files, max_bytes):
        batch = Batch(files_of_batch)
        listing.count(batch)
        yield batch
    listing.walking = False


def list_batches(
    root: str,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    follow_symlinks: bool = False,
    max_files: int = 1000,
    max_bytes: int = 256 * MiB,
    shard: Shard | None = None,
) -> FileListing:
    """Walk `root` and return its files (of one shard, if given) as batches, heaviest first,
    plus what was skipped or failed (the whole tree in memory: the backup flow streams instead)."""
    listing = open_listing(root)
    batches = stream_batches(listing, include=include, exclude=exclude, follow_symlinks=follow_symlinks,
                             max_files=max_files, max_bytes=max_bytes, shard=shard)
    listing.batches = heaviest_first(list(batches))
    return listing


# A request costs the storage about as much time as 256 KiB of data: measured on Azurite
# (docs/performance.md), and on Azure the ratio is similar.
REQUEST_COST_BYTES = 256 * 1024


def upload_weight(files: Sequence[FileEntry]) -> int:
    """What copying `files` costs the storage, in bytes, counting each request as 256 KiB."""
    size = files.bytes if isinstance(files, Batch) else sum(f.size for f in files)
    return size + REQUEST_COST_BYTES * len(files)


def heaviest_first(batches: list[Batch]) -> list[Batch]:
    """The batches in order of upload weight, heaviest first: when there are more batches
    than copy tasks at once, the long ones start early and overlap the many short ones
    instead of running alone at the end."""
    return sorted(batches, key=upload_weight, reverse=True)
