"""A BlobStore in memory, for unit tests of the copy, history and mirror logic (the real
behaviour is tested against Azurite)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from site_backup.blob_metadata import is_folder_marker, stored_mtime
from site_backup.storage import KeptBlob, RemoteBlob, RetryLog


def _condition_not_met():
    """The error Azure's SDK raises for a 412 ConditionNotMet."""
    from azure.core.exceptions import ResourceModifiedError

    exc = ResourceModifiedError(message="412 ConditionNotMet")
    exc.status_code, exc.error_code = 412, "ConditionNotMet"
    return exc


_etags = itertools.count(1)


@dataclass
class StoredBlob:
    data: bytes
    content_md5: bytes | None
    content_type: str
    metadata: dict[str, str]
    etag: str = field(default_factory=lambda: f'"0x{next(_etags):X}"')  # new with every write, as Azure's


@dataclass
class MemoryBlobStore:
    """A BlobStore in a dict, for unit tests of the copy logic. Like Azure, a committed
    block list stores the MD5 it is given without checking it."""

    blobs: dict[str, StoredBlob] = field(default_factory=dict)
    staged: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    snapshots: dict[tuple[str, str], StoredBlob] = field(default_factory=dict)  # (name, snapshot time)
    versioning: bool = False  # True: act as an account with blob versioning on
    retries: RetryLog = field(default_factory=RetryLog)  # the run's budget, as the real store carries it
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _clock: Any = field(default_factory=lambda: itertools.count(1))

    def snapshot(self, name: str) -> str:
        with self._lock:
            self.requests.append(("snapshot", name))
            when = f"2026-01-01T00:00:00.{next(self._clock):07d}Z"  # ordered like Azure's snapshot times
            self.snapshots[(name, when)] = self.blobs[name]
        return when

    def _version(self, name: str) -> str | None:
        """As a versioning account does: the blob's previous version is kept by itself."""
        if not self.versioning:
            return None
        when = f"2026-01-01T00:00:00.{next(self._clock):07d}Z"
        if name in self.blobs:
            self.snapshots[(name, "v" + when)] = self.blobs[name]
        return when

    def get(self, name: str) -> RemoteBlob | None:
        with self._lock:
            self.requests.append(("get", name))
        return self._remote(name)

    def _remote(self, name: str) -> RemoteBlob | None:
        with self._lock:
            blob = self.blobs.get(name)
        if blob is None:
            return None
        return RemoteBlob(len(blob.data), blob.content_md5, stored_mtime(blob.metadata), is_folder_marker(blob.metadata),
                          version_id="current" if self.versioning else None, etag=blob.etag)

    def _check(self, name: str, etag: str | None) -> None:
        """As Azure answers a condition that fails: 412 (a blob that is gone fails If-Match too)."""
        if etag and (name not in self.blobs or self.blobs[name].etag != etag):
            raise _condition_not_met()

    def list(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]:
        for name in sorted(self.blobs):
            if name.startswith(prefix):
                yield name, self._remote(name)

    def list_folder(self, prefix: str, recursive: bool = False) -> Iterator[tuple[str, RemoteBlob]]:
        with self._lock:
            self.requests.append(("list", prefix))
        for name in sorted(self.blobs):
            if name.startswith(prefix) and (recursive or "/" not in name[len(prefix):]):
                yield name, self._remote(name)

    def read(self, name: str) -> Iterator[bytes]:
        data = self.blobs[name].data
        return iter([data[i : i + 1024] for i in range(0, len(data), 1024)])

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]
            ) -> str | None:
        if hashlib.md5(data).digest() != md5:
            raise ValueError("Md5Mismatch: the body does not match its Content-MD5")
        with self._lock:
            self.requests.append(("put", name))
            version = self._version(name)
            self.blobs[name] = StoredBlob(data, md5, content_type, dict(metadata))
        return version

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        base64.b64decode(block_id, validate=True)
        with self._lock:
            self.requests.append(("stage", name))
            self.staged[(name, block_id)] = data

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> str | None:
        with self._lock:
            self.requests.append(("commit", name))
            data = b"".join(self.staged.pop((name, b)) for b in block_ids)
            version = self._version(name)
            self.blobs[name] = StoredBlob(data, md5, content_type, dict(metadata))
        return version

    # What HistoryStore adds, in memory.
    def create_container(self) -> bool:
        return False

    def commit_new(self, name: str, block_ids: list[str], *, md5: bytes, content_type: str,
                   metadata: dict[str, str]) -> None:
        with self._lock:
            if name in self.blobs:
                raise ValueError(f"BlobAlreadyExists: {name}")
        self.commit_blocks(name, block_ids, md5=md5, content_type=content_type, metadata=metadata)

    def list_metadata(self, prefix: str) -> Iterator[tuple[str, int, dict[str, str]]]:
        for name in sorted(self.blobs):
            if name.startswith(prefix):
                yield name, len(self.blobs[name].data), dict(self.blobs[name].metadata)

    def list_kept(self, prefix: str, versions: bool = False) -> Iterator[KeptBlob]:
        kept = []
        for (name, when), blob in self.snapshots.items():
            if name.startswith(prefix) and (versions or not when.startswith("v")):
                version = when[1:] if when.startswith("v") else None
                kept.append(KeptBlob(name, len(blob.data), blob.content_md5, None if version else when, version,
                                     False))
        for name, blob in self.blobs.items():
            if name.startswith(prefix):
                kept.append(KeptBlob(name, len(blob.data), blob.content_md5))
        return iter(sorted(kept, key=lambda k: (k.name, k.current, k.snapshot or k.version_id or "")))

    def read_kept(self, name: str, snapshot: str | None = None, version_id: str | None = None) -> Iterator[bytes]:
        blob = self.snapshots[(name, snapshot)] if snapshot else \
            self.snapshots[(name, "v" + version_id)] if version_id else self.blobs[name]
        return iter([blob.data])

    def source_url(self, name: str, snapshot: str | None = None):
        return (self, name, snapshot)  # what copy_in of another MemoryBlobStore reads

    def copy_in(self, name: str, source_url, source_etag: str | None = None) -> None:
        store, source, snapshot = source_url
        with store._lock:
            store._check(source, source_etag)
        blob = store.snapshots[(source, snapshot)] if snapshot else store.blobs[source]
        with self._lock:
            self.requests.append(("copy", name))
            self.blobs[name] = StoredBlob(blob.data, blob.content_md5, blob.content_type, dict(blob.metadata))

    def delete(self, name: str, lease_id: str | None = None, if_match: str | None = None) -> None:
        with self._lock:
            self.requests.append(("delete", name))
            self._check(name, if_match)
            if any(n == name and not when.startswith("v") for n, when in self.snapshots):
                raise ValueError("SnapshotsPresent: This operation is not permitted because the blob has snapshots.")
            self._version(name)  # a versioning account keeps the deleted blob as a previous version
            self.blobs.pop(name, None)

    def touch_container(self) -> None:
        with self._lock:
            self.requests.append(("touch", ""))

    def delete_with_snapshots(self, name: str, if_match: str | None = None) -> None:
        with self._lock:
            self.requests.append(("delete", name))
            self._check(name, if_match)
            self.blobs.pop(name, None)
            for key in [k for k in self.snapshots if k[0] == name and not k[1].startswith("v")]:
                del self.snapshots[key]

    def delete_kept(self, name: str, snapshot: str | None = None, version_id: str | None = None) -> None:
        with self._lock:
            self.requests.append(("delete", name))
            if snapshot or version_id:
                self.snapshots.pop((name, snapshot or "v" + version_id), None)
            else:
                self.blobs.pop(name, None)
