"""Confirm what checkpoints claim against what storage holds now.

A checkpoint says a batch's files were backed up; it saves reading and hashing them again,
but it cannot see a blob deleted or replaced since (a lifecycle rule, the portal, another
tool). So a run claims a file from a checkpoint only when its own listing of the
destination shows the blob with the recorded size and Content-MD5."""

from __future__ import annotations

from typing import Iterable, Sequence

from .names import blob_name
from .files import FileEntry
from .remote import RemoteLookup
from .storage import BlobStore, RemoteBlob


def holds(blob: RemoteBlob | None, size: int, md5: bytes | None) -> bool:
    """Whether `blob` is the content a checkpoint recorded: the same size and Content-MD5."""
    return blob is not None and not blob.folder and blob.size == size and blob.content_md5 == md5


def unconfirmed(store: BlobStore, prefix: str, claims: Iterable[tuple[Sequence[FileEntry], list[tuple] | None]],
                listed: dict[str, RemoteBlob] | None = None) -> list[frozenset[str]]:
    """For each (batch, entries) a checkpoint vouches for, the paths whose blob the
    destination does not show with the recorded size and Content-MD5 (empty: the batch is
    confirmed). Entries are (path, size, md5, ...); a checkpoint without entries (written
    before they were kept) confirms nothing. The batches' folders are listed once for all
    of them (several at a time), so grouping batches saves requests; or `listed`, the
    run's listing of the whole destination (remote.list_destination), answers them all."""
    claims = list(claims)
    names = (blob_name(prefix, e[0]) for _, entries in claims if entries for e in entries)
    lookup = RemoteLookup(store, names, listed).prefetch(at_once=32)
    answer = []
    for batch, entries in claims:
        if entries is None:
            answer.append(frozenset(f.path for f in batch))
            continue
        answer.append(frozenset(path for path, size, md5, *_ in entries
                                if not holds(lookup.get(blob_name(prefix, path)), size, md5)))
    return answer
