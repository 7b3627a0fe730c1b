"""One interface for blob storage: what the backup compares against (RemoteBlob), the few
operations it needs (BlobStore), and the count of retried requests; Azure's implementation
is in azure_store.py, an in-memory one for unit tests in tests/memory_store.py."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Protocol


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
    version_id: str | None = None  # listed on accounts with blob versioning on
    etag: str | None = None  # as listed: what a conditional request (If-Match) names
    tier: str | None = None  # as listed (AccessTier): an "Archive" blob cannot be read until rehydrated


class BlobStore(Protocol):
    """The few blob operations a backup needs, on one container."""

    retries: "RetryLog"  # the run's retries, by reason, and its budget

    def get(self, name: str) -> RemoteBlob | None: ...

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]
            ) -> str | None: ...

    def snapshot(self, name: str) -> str: ...

    def stage_block(self, name: str, block_id: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]: ...

    def list_folder(self, prefix: str, recursive: bool = False) -> Iterator[tuple[str, RemoteBlob]]: ...

    def read(self, name: str) -> Iterator[bytes]: ...

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> str | None: ...

    @property
    def versioning(self) -> bool: ...


class RetryLog:
    """Counts the retries of storage requests, by reason (thread-safe), and carries the
    run's budget, which decides them (a fresh default one when none is given)."""

    def __init__(self, budget=None) -> None:
        from .retry import StorageBudget

        self._lock = threading.Lock()
        self.reasons: Counter[str] = Counter()
        self.budget = budget if budget is not None else StorageBudget()

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


class KeptBlob(NamedTuple):
    """A blob or one of its snapshots or versions: where a run's content may live now."""

    name: str
    size: int
    content_md5: bytes | None
    snapshot: str | None = None  # None for the current blob
    version_id: str | None = None
    current: bool = True
    tier: str | None = None  # as listed: "Archive" cannot be read until rehydrated
