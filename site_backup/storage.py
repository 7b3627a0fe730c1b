"""One interface for blob storage: Azure (or Azurite) for real, memory for unit tests."""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Protocol

from .errors import error_code

MTIME_KEY = "mtime"  # the metadata key rclone uses too, in the same RFC 3339 format
AZCOPY_MTIME_KEY = "modtime"  # AzCopy's --preserve-posix-properties: decimal nanoseconds since 1970
FOLDER_KEY = "hdi_isfolder"  # AzCopy's (and Data Lake's) marker of a blob that stands for a folder


@dataclass(frozen=True)
class RemoteBlob:
    """What the backup compares a file against, and what a restore needs besides the bytes.
    `mtime_ns` is the file's modification time as a tool stored it (ours or rclone's
    `mtime`, else AzCopy's `modtime`); `last_modified_ns` is when the blob was written."""

    size: int
    content_md5: bytes | None
    mtime_ns: int | None
    folder: bool = False
    last_modified_ns: int | None = None


class BlobStore(Protocol):
    """The few blob operations a backup needs, on one container."""

    def get(self, name: str) -> RemoteBlob | None: ...

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]) -> None: ...

    def stage_block(self, name: str, block_id: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]: ...

    def read(self, name: str) -> Iterator[bytes]: ...

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> None: ...


def format_mtime(mtime_ns: int) -> str:
    """RFC 3339 with nanoseconds, trailing zeros trimmed (Go's RFC3339Nano, as rclone writes)."""
    seconds, nanos = divmod(mtime_ns, 10**9)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}{'.' + fraction if fraction else ''}Z"


def parse_mtime(text: str | None) -> int | None:
    """Inverse of format_mtime; None for anything else (the blob then compares by MD5)."""
    if not text:
        return None
    try:
        main, _, fraction = text.rstrip("Z").partition(".")
        seconds = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
        return int(seconds) * 10**9 + nanos
    except ValueError:
        return None


def stored_mtime(metadata: dict[str, str] | None) -> int | None:
    """The file's modification time from a blob's metadata: `mtime` (RFC 3339, ours and
    rclone's), else AzCopy's `modtime` (integer nanoseconds); None when neither parses.
    Metadata names are case-insensitive in Azure, so they are matched that way."""
    meta = {k.lower(): v for k, v in (metadata or {}).items()}
    found = parse_mtime(meta.get(MTIME_KEY))
    if found is None:
        modtime = meta.get(AZCOPY_MTIME_KEY, "").strip()
        if modtime.lstrip("-").isdigit():
            return int(modtime)
        found = parse_mtime(modtime)
    return found


def is_folder_marker(metadata: dict[str, str] | None) -> bool:
    """A blob that stands for a folder (AzCopy writes one per folder with
    --preserve-posix-properties, Data Lake accounts for every directory)."""
    meta = {k.lower(): v for k, v in (metadata or {}).items()}
    return meta.get(FOLDER_KEY, "").strip().lower() == "true"


class RetryLog:
    """Counts the SDK's retries of storage requests, by reason (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reasons: Counter[str] = Counter()

    def __call__(self, response=None, error=None, **_) -> None:
        """The SDK's retry_hook."""
        if response is not None:
            self.add(f"{response.status_code} {response.headers.get('x-ms-error-code') or response.reason}")
        else:
            self.add(type(error).__name__ if error is not None else "retry")

    def add(self, reason: str) -> None:
        with self._lock:
            self.reasons[reason] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.reasons.values())

    def describe(self) -> str:
        with self._lock:
            return ", ".join(f"{reason} x{n}" for reason, n in self.reasons.most_common())


class AzureBlobStore:
    """BlobStore over one container (sync, thread-safe): the direct signed requests where an
    account key allows them, the azure-storage-blob ContainerClient for the rest, built on
    first use. Every request reports its retries to `retries`."""

    def __init__(self, container_name: str, container_client: Callable[[], Any], retries: RetryLog | None = None,
                 signed=None):
        self.container_name = container_name
        self._container_client = container_client
        self.retries = retries if retries is not None else RetryLog()
        self.signed = signed  # fastblob.SharedKeyBlobs, when available

    @functools.cached_property
    def container(self):
        """The SDK's ContainerClient (importing the SDK takes 0.17 s: only when needed)."""
        return self._container_client()

    def get(self, name: str) -> RemoteBlob | None:
        if self.signed is not None:
            found = self.signed.head(self.container_name, name, self.retries)
            if found is None:
                return None
            size, md5, metadata = found
            return RemoteBlob(size, md5, stored_mtime(metadata), is_folder_marker(metadata))
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self.container.get_blob_client(name).get_blob_properties(retry_hook=self.retries)
        except ResourceNotFoundError as exc:
            if error_code(exc) == "ContainerNotFound":
                raise
            return None
        return _remote(props)

    def list(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]:
        """Every blob whose name starts with `prefix`, with size, MD5, stored mtime, whether it
        is a folder marker and when it was written: all from one listing (with metadata)."""
        for props in self.container.list_blobs(name_starts_with=prefix or None, include=["metadata"]):
            yield props.name, _remote(props)

    def read(self, name: str) -> Iterator[bytes]:
        """The blob's content in chunks, downloaded a few ranges at a time."""
        return self.container.download_blob(name, max_concurrency=4, retry_hook=self.retries).chunks()

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]) -> None:
        if self.signed is not None:
            self.signed.put(self.container_name, name, data, md5, content_type, metadata, self.retries)
            return
        # validate_content sends a transactional Content-MD5 the service checks on receipt;
        # content_md5 is the property stored with the blob.
        self.container.get_blob_client(name).upload_blob(
            data,
            overwrite=True,
            validate_content=True,
            content_settings=_content_settings(md5, content_type),
            metadata=metadata,
            retry_hook=self.retries,
        )

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        if self.signed is not None:
            self.signed.stage_block(self.container_name, name, block_id, data, self.retries)
            return
        self.container.get_blob_client(name).stage_block(
            block_id, data, validate_content=True, retry_hook=self.retries
        )

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> None:
        if self.signed is not None:
            self.signed.commit_blocks(self.container_name, name, block_ids, md5, content_type, metadata, self.retries)
            return
        from azure.storage.blob import BlobBlock

        self.container.get_blob_client(name).commit_block_list(
            [BlobBlock(block_id=b) for b in block_ids],
            content_settings=_content_settings(md5, content_type),
            metadata=metadata,
            retry_hook=self.retries,
        )


def _remote(props) -> RemoteBlob:
    md5 = props.content_settings.content_md5
    written = props.last_modified
    return RemoteBlob(props.size, bytes(md5) if md5 else None, stored_mtime(props.metadata),
                      is_folder_marker(props.metadata),
                      calendar.timegm(written.utctimetuple()) * 10**9 + written.microsecond * 1000 if written else None)


def _content_settings(md5: bytes, content_type: str):
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_type=content_type, content_md5=bytearray(md5))


@dataclass
class StoredBlob:
    data: bytes
    content_md5: bytes | None
    content_type: str
    metadata: dict[str, str]


@dataclass
class MemoryBlobStore:
    """A BlobStore in a dict, for unit tests of the copy logic. Like Azure, a committed
    block list stores the MD5 it is given without checking it."""

    blobs: dict[str, StoredBlob] = field(default_factory=dict)
    staged: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, name: str) -> RemoteBlob | None:
        with self._lock:
            self.requests.append(("get", name))
            blob = self.blobs.get(name)
        if blob is None:
            return None
        return RemoteBlob(len(blob.data), blob.content_md5, stored_mtime(blob.metadata), is_folder_marker(blob.metadata))

    def list(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]:
        for name in sorted(self.blobs):
            if name.startswith(prefix):
                yield name, self.get(name)

    def read(self, name: str) -> Iterator[bytes]:
        data = self.blobs[name].data
        return iter([data[i : i + 1024] for i in range(0, len(data), 1024)])

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]) -> None:
        if hashlib.md5(data).digest() != md5:
            raise ValueError("Md5Mismatch: the body does not match its Content-MD5")
        with self._lock:
            self.requests.append(("put", name))
            self.blobs[name] = StoredBlob(data, md5, content_type, dict(metadata))

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        base64.b64decode(block_id, validate=True)
        with self._lock:
            self.requests.append(("stage", name))
            self.staged[(name, block_id)] = data

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> None:
        with self._lock:
            self.requests.append(("commit", name))
            data = b"".join(self.staged.pop((name, b)) for b in block_ids)
            self.blobs[name] = StoredBlob(data, md5, content_type, dict(metadata))
