"""Split one backup into N shards by a stable rule, so several processes or machines can
each back up a part of the same tree (the parent flow `backup-site-sharded` starts them).

The rule is rclone's `--hash-filter K/N`: the path relative to the root, NFC-normalised and
lower-cased, hashed with MD5; the first 8 bytes of the digest as a little-endian number,
modulo N, is the file's shard. So `rclone lsf --hash-filter K/N ROOT` lists the same files
as shard K/N. It depends on nothing but the path: every file lands in exactly one shard, a
file keeps its shard from run to run, and a shard's batches (cut by a CRC-32 of the path,
a different hash) and checkpoint keys stay the same from run to run.

With `by="top-level-folder"` the key is the first segment of the path instead, so a whole
top-level folder (with everything below it) goes to one shard and the other shards never
walk it; a file directly under the root is its own top-level entry.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from .errors import ConfigurationError

SHARD_BY = ("path", "top-level-folder")
_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
MAX_SHARDS = 10_000  # far past any pool of workers; a typo such as 1/40000000 is refused


def shard_of(key: str, count: int) -> int:
    """The shard (0 to count-1) of a relative path or top-level name: rclone's hash-filter rule."""
    normalized = unicodedata.normalize("NFC", key).lower()
    digest = hashlib.md5(normalized.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`, keyed by the whole path or its top-level folder."""

    index: int
    count: int
    by: str = "path"

    @classmethod
    def parse(cls, text: str | None, by: str = "path") -> Shard | None:
        """The shard "K/N" names (0 <= K < N), or None for no text; ConfigurationError with the fix."""
        if by not in SHARD_BY:
            raise ConfigurationError(f"invalid shard rule {by!r}: use one of {', '.join(SHARD_BY)}")
        if text is None or text == "":
            return None
        match = _SHARD.fullmatch(text) if isinstance(text, str) else None
        if not match:
            raise ConfigurationError(f"invalid shard {text!r}: write it as K/N, e.g. 0/4 for the first of 4 shards")
        index, count = int(match[1]), int(match[2])
        if not 1 <= count <= MAX_SHARDS:
            raise ConfigurationError(f"invalid shard {text!r}: the number of shards N must be 1 to {MAX_SHARDS}")
        if index >= count:
            raise ConfigurationError(f"invalid shard {text!r}: K counts from 0, so it must be below N "
                                     f"(0/{count} to {count - 1}/{count})")
        return cls(index, count, by)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def key(self, rel: str) -> str:
        return rel.split("/", 1)[0] if self.by == "top-level-folder" else rel

    def owns(self, rel: str) -> bool:
        """Whether the file, folder or problem at `rel` (relative, "/"-separated) is this shard's."""
        return self.count == 1 or shard_of(self.key(rel), self.count) == self.index

    @property
    def walks_other_folders(self) -> bool:
        """Whether folders of other shards must still be walked (their files may be ours)."""
        return self.by == "path"


def check_mirror(shard: "Shard | None", delete_missing: bool) -> None:
    """Refuse a mirror of one shard: its walk sees part of the tree, so it would delete the
    blobs of every other shard's files."""
    if shard is not None and delete_missing:
        raise ConfigurationError(
            f"--delete-missing needs the whole tree, and shard {shard} sees only part of it (it would delete the "
            "other shards' blobs): leave out --shard, or --delete-missing"
        )


def check_shards(count: int, retries: int = 0) -> None:
    """Check a sharded run's number of shards and retries per shard; ConfigurationError with the fix."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        raise ConfigurationError(f"invalid number of shards {count!r}: give a whole number from 1 to {MAX_SHARDS}, "
                                 f"e.g. the number of workers that will run them")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"invalid shard_retries {retries!r}: give a whole number, 0 or more")
