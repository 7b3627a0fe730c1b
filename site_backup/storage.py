"""One interface for blob storage: Azure (or Azurite) for real, memory for unit tests."""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import itertools
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Protocol

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
    version_id: str | None = None  # listed on accounts with blob versioning on
    etag: str | None = None  # as listed: what a conditional request (If-Match) names


class BlobStore(Protocol):
    """The few blob operations a backup needs, on one container."""

    def get(self, name: str) -> RemoteBlob | None: ...

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]
            ) -> str | None: ...

    def snapshot(self, name: str) -> str: ...

    def stage_block(self, name: str, block_id: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]: ...

    def list_folder(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]: ...

    def read(self, name: str) -> Iterator[bytes]: ...

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> str | None: ...

    @property
    def versioning(self) -> bool: ...


def format_mtime(mtime_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, trailing zeros trimmed, e.g. 2023-11-14T22:13:20.1Z.
    Any integer works: integer arithmetic on the proleptic Gregorian calendar, no datetime
    range. Years outside 0-9999 are written as Go's time.Format writes them (rclone's code):
    `11476-...`, `0000-...`, `-0249-...`."""
    seconds, nanos = divmod(mtime_ns, 10**9)
    days, second_of_day = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    sign = "-" if year < 0 else ""
    fraction = f"{nanos:09d}".rstrip("0")
    return (f"{sign}{abs(year):04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
            f"{'.' + fraction if fraction else ''}Z")


_RFC3339 = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII
)


def parse_mtime(text: str | None) -> int | None:
    """Nanoseconds since 1970 from an RFC 3339 time as format_mtime or rclone writes it (any
    year, any offset, up to 9 fraction digits kept); None for anything else (the blob then
    compares by MD5)."""
    found = _RFC3339.fullmatch(text) if isinstance(text, str) and len(text) < 64 else None
    if not found:
        return None
    year, month, day, hour, minute, second = (int(g) for g in found.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            and hour < 24 and minute < 60 and second < 60):
        return None
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if found.group(8):
        offset = int(found.group(9)) * 3600 + int(found.group(10)) * 60
        seconds -= offset if found.group(8) == "+" else -offset
    nanos = int((found.group(7) or "").ljust(9, "0")[:9])
    return seconds * 10**9 + nanos


# Howard Hinnant's days <-> civil date algorithms (proleptic Gregorian, day 0 = 1970-01-01),
# exact for every integer with Python's floor division.
def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


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


class HistoryStore:
    """What history adds to AzureBlobStore: write-once blobs, listings with metadata and
    with snapshots, reading and deleting one snapshot. Kept apart from the backup's
    requests: none of this is on a backup's path for each file."""

    def create_container(self) -> bool:
        """Create the container when it is missing; False when it was there."""
        if self.signed is not None:
            return self.signed.create_container(self.container_name, self.retries)
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            return False
        return True

    def commit_new(self, name: str, block_ids: list[str], *, md5: bytes, content_type: str,
                   metadata: dict[str, str]) -> None:
        """Put Block List that only creates the blob (refused when it exists)."""
        if self.signed is not None:
            self.signed.commit_new(self.container_name, name, block_ids, md5, content_type, metadata, self.retries)
            return
        from azure.core import MatchConditions
        from azure.storage.blob import BlobBlock

        self.container.get_blob_client(name).commit_block_list(
            [BlobBlock(block_id=b) for b in block_ids], content_settings=_content_settings(md5, content_type),
            metadata=metadata, match_condition=MatchConditions.IfMissing, retry_hook=self.retries)

    def list_metadata(self, prefix: str) -> Iterator[tuple[str, int, dict[str, str]]]:
        """(name, size, metadata) of every blob whose name starts with `prefix`."""
        if self.signed is not None:
            for b in self.signed.list_blobs(self.container_name, prefix or None, self.retries):
                yield b.name, b.size, b.metadata
            return
        for props in self.container.list_blobs(name_starts_with=prefix or None, include=["metadata"]):
            yield props.name, props.size, {k.lower(): v for k, v in (props.metadata or {}).items()}

    def lease(self, name: str, action: str, lease_id: str, duration: int = 60) -> None:
        """Acquire (for `duration` seconds), renew or release the lease `lease_id` on a blob."""
        if self.signed is not None:
            self.signed.lease(self.container_name, name, action, lease_id, self.retries, duration)
            return
        from azure.storage.blob import BlobLeaseClient

        client = BlobLeaseClient(self.container.get_blob_client(name), lease_id=lease_id)
        if action == "acquire":
            client.acquire(lease_duration=duration)
        else:
            getattr(client, action)()

    def delete(self, name: str, lease_id: str | None = None, if_match: str | None = None) -> None:
        """Delete a blob (a leased one with its lease id); gone already is no error. With
        `if_match`, only while the blob's ETag is that one (else 412: it changed)."""
        if self.signed is not None:
            self.signed.delete(self.container_name, name, self.retries, lease_id, if_match=if_match)
            return
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.container.delete_blob(name, lease=lease_id, retry_hook=self.retries, **_if_match(if_match))
        except ResourceNotFoundError:
            pass

    def list_leases(self, prefix: str) -> Iterator[tuple[str, str, dict[str, str]]]:
        """(name, lease state, metadata) of the blobs under `prefix`: `leased` while a lease
        is held, `expired`, `broken` or `available` otherwise."""
        for props in self.container.list_blobs(name_starts_with=prefix or None, include=["metadata"]):
            yield props.name, props.lease.state, {k.lower(): v for k, v in (props.metadata or {}).items()}

    def list_kept(self, prefix: str, versions: bool = False) -> Iterator[KeptBlob]:
        """Every blob under `prefix` with its snapshots (and versions, on an account that
        keeps them), in name order, a blob's snapshots before the blob itself."""
        include = ["snapshots", "versions"] if versions else ["snapshots"]
        for props in self.container.list_blobs(name_starts_with=prefix or None, include=include):
            md5 = props.content_settings.content_md5
            # With versions listed, only the current version says IsCurrentVersion=true;
            # the versions of a deleted blob are none of them current.
            current = not props.snapshot and (props.is_current_version is True if versions else True)
            yield KeptBlob(props.name, props.size, bytes(md5) if md5 else None, props.snapshot or None,
                           getattr(props, "version_id", None), current)

    def read_kept(self, name: str, snapshot: str | None = None, version_id: str | None = None) -> Iterator[bytes]:
        """A snapshot's or version's content (the blob's own without either)."""
        if snapshot:
            client = self.container.get_blob_client(name, snapshot=snapshot)
            return client.download_blob(max_concurrency=4, retry_hook=self.retries).chunks()
        return self.container.get_blob_client(name).download_blob(
            max_concurrency=4, version_id=version_id, retry_hook=self.retries).chunks()

    def source_url(self, name: str, snapshot: str | None = None) -> str:
        """The URL another request of this account copies the blob (or one snapshot) from;
        it carries the SAS when the credentials are one."""
        if self.signed is not None:
            return self.signed.url(self.container_name, name, snapshot)
        return self.container.get_blob_client(name, snapshot=snapshot).url

    def copy_in(self, name: str, source_url: str, source_etag: str | None = None) -> None:
        """Copy Blob from `source_url` (same account) to `name`: content, Content-MD5 and
        metadata, without a download; returns once the copy has ended. With `source_etag`,
        only while the source's ETag is that one (else 412: the source changed)."""
        if self.signed is not None:
            signed, container = self.signed, self.container_name
            status = signed.copy(container, name, source_url, self.retries, source_if_match=source_etag)
            wait_for_copy(status, lambda: signed.copy_status(container, name, self.retries), self.retries.budget)
            return
        client = self.container.get_blob_client(name)
        conditions = {}
        if source_etag:
            from azure.core import MatchConditions

            conditions = dict(source_etag=source_etag, source_match_condition=MatchConditions.IfNotModified)
        answer = client.start_copy_from_url(source_url, retry_hook=self.retries, **conditions)
        wait_for_copy(answer.get("copy_status") or "success",
                      lambda: client.get_blob_properties(retry_hook=self.retries).copy.status,
                      self.retries.budget)

    def touch_container(self) -> None:
        """Give the container a new ETag (Set Container Metadata with its own metadata): the
        generation in checkpoint keys changes, so no checkpoint vouches for a blob deleted now."""
        metadata = self.container.get_container_properties(retry_hook=self.retries).metadata
        self.container.set_container_metadata(metadata, retry_hook=self.retries)

    def delete_with_snapshots(self, name: str, if_match: str | None = None) -> None:
        """Delete a blob and its snapshots (Azure refuses to delete a blob that has
        snapshots without them); gone already is no error. With `if_match`, only while the
        blob's ETag is that one (else 412: it changed)."""
        if self.signed is not None:
            self.signed.delete(self.container_name, name, self.retries, if_match=if_match, snapshots=True)
            return
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.container.delete_blob(name, delete_snapshots="include", retry_hook=self.retries,
                                       **_if_match(if_match))
        except ResourceNotFoundError:
            pass

    def delete_kept(self, name: str, snapshot: str | None = None, version_id: str | None = None) -> None:
        """Delete one snapshot or version, or a blob (with no snapshot or version: the blob)."""
        from azure.core.exceptions import ResourceNotFoundError

        client = self.container.get_blob_client(name, snapshot=snapshot) if snapshot else \
            self.container.get_blob_client(name)
        try:
            client.delete_blob(version_id=version_id, retry_hook=self.retries) if version_id else \
                client.delete_blob(retry_hook=self.retries)
        except ResourceNotFoundError:
            pass  # already gone: what was wanted


class AzureBlobStore(HistoryStore):
    """BlobStore over one container (sync, thread-safe): the direct requests where the
    settings allow them (any sign-in mode, no proxy), the azure-storage-blob ContainerClient
    for the rest, built on first use. Every request reports its retries to `retries`."""

    def __init__(self, container_name: str, container_client: Callable[[], Any], retries: RetryLog | None = None,
                 signed=None):
        self.container_name = container_name
        self._container_client = container_client
        self.retries = retries if retries is not None else RetryLog()
        self.signed = signed  # fastblob.DirectBlobs, when available
        self._versioning = False

    @property
    def versioning(self) -> bool:
        """Whether a write of this run answered with a version id: the account keeps every
        blob's previous versions by itself (blob versioning on), so no snapshot is needed.
        Kept on the account's DirectBlobs when there is one, so it is learnt once per run."""
        return getattr(self.signed, "versioning", False) if self.signed is not None else self._versioning

    def _wrote(self, version_id: str | None) -> str | None:
        if version_id:
            if self.signed is not None:
                self.signed.versioning = True
            self._versioning = True
        return version_id

    def snapshot(self, name: str) -> str:
        """Snapshot Blob: keep the blob's present content; returns the snapshot's time."""
        if self.signed is not None:
            return self.signed.snapshot(self.container_name, name, self.retries)
        return self.container.get_blob_client(name).create_snapshot(retry_hook=self.retries)["snapshot"]

    @functools.cached_property
    def container(self):
        """The SDK's ContainerClient, made when first needed: importing the SDK is a fixed
        cost that a backup over the direct requests never pays."""
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

    def list_folder(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]:
        """The blobs whose names start with `prefix` and hold no '/' after it (one folder's
        files, no subfolders), with size, MD5 and stored mtime."""
        if self.signed is not None:
            for b in self.signed.list_blobs(self.container_name, prefix or None, self.retries, delimiter="/"):
                yield b.name, RemoteBlob(b.size, b.content_md5, stored_mtime(b.metadata), is_folder_marker(b.metadata),
                                         version_id=b.version_id)
            return
        for item in self.container.walk_blobs(name_starts_with=prefix or None, include=["metadata"], delimiter="/"):
            if not item.name.endswith("/") or hasattr(item, "size"):  # BlobPrefix items are subfolders
                yield item.name, _remote(item)

    def read(self, name: str) -> Iterator[bytes]:
        """The blob's content in chunks, downloaded a few ranges at a time (a stopped or
        failed run stops between chunks)."""
        budget = self.retries.budget
        for chunk in self.container.download_blob(name, max_concurrency=4, retry_hook=self.retries).chunks():
            budget.check()
            yield chunk

    def put(self, name: str, data: bytes, *, md5: bytes, content_type: str, metadata: dict[str, str]
            ) -> str | None:
        """Put Blob; the new version's id when the account keeps versions, else None."""
        if self.signed is not None:
            return self._wrote(self.signed.put(self.container_name, name, data, md5, content_type, metadata,
                                               self.retries))
        # validate_content sends a transactional Content-MD5 the service checks on receipt;
        # content_md5 is the property stored with the blob.
        return self._wrote(self.container.get_blob_client(name).upload_blob(
            data,
            overwrite=True,
            validate_content=True,
            content_settings=_content_settings(md5, content_type),
            metadata=metadata,
            retry_hook=self.retries,
        ).get("version_id"))

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        if self.signed is not None:
            self.signed.stage_block(self.container_name, name, block_id, data, self.retries)
            return
        self.container.get_blob_client(name).stage_block(
            block_id, data, validate_content=True, retry_hook=self.retries
        )

    def commit_blocks(
        self, name: str, block_ids: list[str], *, md5: bytes, content_type: str, metadata: dict[str, str]
    ) -> str | None:
        if self.signed is not None:
            return self._wrote(self.signed.commit_blocks(self.container_name, name, block_ids, md5, content_type,
                                                         metadata, self.retries))
        from azure.storage.blob import BlobBlock

        return self._wrote(self.container.get_blob_client(name).commit_block_list(
            [BlobBlock(block_id=b) for b in block_ids],
            content_settings=_content_settings(md5, content_type),
            metadata=metadata,
            retry_hook=self.retries,
        ).get("version_id"))


def _remote(props) -> RemoteBlob:
    md5 = props.content_settings.content_md5
    written = props.last_modified
    return RemoteBlob(props.size, bytes(md5) if md5 else None, stored_mtime(props.metadata),
                      is_folder_marker(props.metadata),
                      calendar.timegm(written.utctimetuple()) * 10**9 + written.microsecond * 1000 if written else None,
                      getattr(props, "version_id", None), getattr(props, "etag", None))


def _if_match(etag: str | None) -> dict:
    """The SDK's keywords for If-Match: `etag` (nothing without one)."""
    if not etag:
        return {}
    from azure.core import MatchConditions

    return dict(etag=etag, match_condition=MatchConditions.IfNotModified)


def _condition_not_met():
    from azure.core.exceptions import ResourceModifiedError

    exc = ResourceModifiedError(message="412 ConditionNotMet")
    exc.status_code, exc.error_code = 412, "ConditionNotMet"
    return exc


def _content_settings(md5: bytes, content_type: str):
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_type=content_type, content_md5=bytearray(md5))


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

    def list_folder(self, prefix: str) -> Iterator[tuple[str, RemoteBlob]]:
        with self._lock:
            self.requests.append(("list", prefix))
        for name in sorted(self.blobs):
            if name.startswith(prefix) and "/" not in name[len(prefix):]:
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
        """Give the container a new ETag (Set Container Metadata with its own metadata): the
        generation in checkpoint keys changes, so no checkpoint vouches for a blob deleted now."""
        metadata = self.container.get_container_properties(retry_hook=self.retries).metadata
        self.container.set_container_metadata(metadata, retry_hook=self.retries)

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


def wait_for_copy(status: str, poll, budget=None, interval: float = 0.5) -> None:
    """Wait until a Copy Blob that answered `status` has ended; `poll()` gives the status
    now. A copy inside one account usually ends at once; Azure may still answer pending."""
    while status == "pending":
        if budget is not None:
            budget.check()
        time.sleep(interval)
        status = poll()
    if status != "success":
        raise RuntimeError(f"the copy to the history container ended {status!r}")
