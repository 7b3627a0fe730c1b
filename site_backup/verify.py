"""Check a backup against the tree: every file has a blob of the same size and MD5."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .checksums import file_md5
from .names import blob_folder, blob_name, decode_path
from .files import FileEntry, Problem, display_path
from .storage import BlobStore, RemoteBlob


@dataclass
class VerifyResult:
    """What one batch of files looks like in storage."""

    matching: int = 0
    bytes_checked: int = 0
    missing: list[Problem] = field(default_factory=list)
    different: list[Problem] = field(default_factory=list)
    unreadable: list[Problem] = field(default_factory=list)


def remote_blobs(store: BlobStore, prefix: str) -> dict[str, RemoteBlob]:
    """Every file's blob under the prefix, by name: one listing instead of a request per
    file. Folder markers (other tools' blobs for folders) are no file's and no extra."""
    return {name: blob for name, blob in store.list(blob_folder(prefix)) if not blob.folder}


def verify_batch(root: str, batch: list[FileEntry], remote: Mapping[str, RemoteBlob], prefix: str,
                 threads: int = 4) -> VerifyResult:
    """Compare each file with its blob by size, then by MD5 (reading the file)."""
    result = VerifyResult()

    def check(entry: FileEntry) -> tuple[str, str]:
        blob = remote.get(blob_name(prefix, entry.path))
        if blob is None:
            return "missing", "no blob"
        try:
            size = os.stat(os.path.join(root, entry.path)).st_size
            if blob.size != size:
                return "different", f"size differs: file {size} bytes, blob {blob.size} bytes"
            if blob.content_md5 is None:
                return "different", "blob has no Content-MD5 to compare with"
            if file_md5(os.path.join(root, entry.path)) != blob.content_md5:
                return "different", "content differs (MD5 of the file is not the blob's Content-MD5)"
        except OSError as exc:
            return "unreadable", f"cannot read the file: {exc.strerror or exc}"
        return "matching", ""

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for entry, (status, reason) in zip(batch, pool.map(check, batch)):
            problem = Problem(display_path(entry.path), reason)
            if status == "matching":
                result.matching += 1
                result.bytes_checked += entry.size
            else:
                getattr(result, status).append(problem)
    return result


def extra_blobs(remote: Iterable[str], batches: Iterable[list[FileEntry]], prefix: str) -> list[str]:
    """Blobs under the prefix with no file in the tree (deleted or excluded files), as the
    paths they stand for relative to the prefix: the form `missing` reports files in."""
    expected = {blob_name(prefix, f.path) for batch in batches for f in batch}
    start = len(prefix) + 1 if prefix else 0
    return sorted(display_path(decode_path(name[start:])) for name in remote if name not in expected)
