"""Azure Blob Storage (or Azurite) behind the BlobStore interface: the direct requests of
fastblob.py where they can serve, azure-storage-blob's clients for the rest."""

from __future__ import annotations

import calendar
import functools
import time
from typing import Any, Callable, Iterator

from .blob_metadata import is_folder_marker, stored_mtime
from .errors import error_code
from .storage import KeptBlob, RemoteBlob, RetryLog


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

    def commit_new(self, name: str, block_ids: list[str], *, md5: bytes | None, content_type: str,
                   metadata: dict[str, str]) -> None:
        """Put Block List that only creates the blob (refused when it exists); no stored
        MD5 when `md5` is None."""
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
        is held, `expired`, `broken` or `available` otherwise. On the direct requests when
        there are any: every backup lists the locks, and the SDK costs a run its import."""
        if self.signed is not None:
            for b in self.signed.list_blobs(self.container_name, prefix or None, self.retries):
                yield b.name, b.lease_state, b.metadata
            return
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
                           getattr(props, "version_id", None), current, tier_name(props.blob_tier))

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
                 signed=None, access_tier: str | None = None):
        self.container_name = container_name
        self._container_client = container_client
        self.retries = retries if retries is not None else RetryLog()
        self.signed = signed  # fastblob.DirectBlobs, when available
        self.access_tier = access_tier  # the tier put and commit_blocks write in; None: the account's default
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

    def list_folder(self, prefix: str, recursive: bool = False) -> Iterator[tuple[str, RemoteBlob]]:
        """The blobs whose names start with `prefix` and hold no '/' after it (one folder's
        files, no subfolders), with size, MD5 and stored mtime; with `recursive`, its
        subfolders' blobs too, from one flat listing."""
        delimiter = None if recursive else "/"
        if self.signed is not None:
            for b in self.signed.list_blobs(self.container_name, prefix or None, self.retries, delimiter=delimiter):
                yield b.name, RemoteBlob(b.size, b.content_md5, stored_mtime(b.metadata), is_folder_marker(b.metadata),
                                         version_id=b.version_id, tier=b.tier)
            return
        if recursive:
            items = self.container.list_blobs(name_starts_with=prefix or None, include=["metadata"])
        else:
            items = self.container.walk_blobs(name_starts_with=prefix or None, include=["metadata"], delimiter="/")
        for item in items:
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
                                               self.retries, self.access_tier))
        # validate_content sends a transactional Content-MD5 the service checks on receipt;
        # content_md5 is the property stored with the blob.
        return self._wrote(self.container.get_blob_client(name).upload_blob(
            data,
            overwrite=True,
            validate_content=True,
            content_settings=_content_settings(md5, content_type),
            metadata=metadata,
            retry_hook=self.retries,
            **_tier(self.access_tier),
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
                                                         metadata, self.retries, self.access_tier))
        from azure.storage.blob import BlobBlock

        return self._wrote(self.container.get_blob_client(name).commit_block_list(
            [BlobBlock(block_id=b) for b in block_ids],
            content_settings=_content_settings(md5, content_type),
            metadata=metadata,
            retry_hook=self.retries,
            **_tier(self.access_tier),
        ).get("version_id"))

    def set_tier(self, name: str, tier: str, rehydrate_priority: str | None = None, snapshot: str | None = None
                 ) -> None:
        """Set Blob Tier (of the blob, or of one snapshot); from Archive, with a rehydrate
        priority this starts a rehydration, which Azure finishes hours later."""
        from azure.storage.blob import StandardBlobTier

        client = self.container.get_blob_client(name, snapshot=snapshot) if snapshot else \
            self.container.get_blob_client(name)
        client.set_standard_blob_tier(StandardBlobTier(tier), retry_hook=self.retries,
                                      **({"rehydrate_priority": rehydrate_priority} if rehydrate_priority else {}))


def tier_name(tier) -> str | None:
    """The SDK's listed tier (an enum or a string) as Azure spells it: Hot, Cool, Cold, Archive."""
    return getattr(tier, "value", tier) or None


def _tier(tier: str | None) -> dict:
    """The SDK's keyword for an upload's tier (its enum: the upload helpers call `.value`)."""
    if not tier:
        return {}
    from azure.storage.blob import StandardBlobTier

    return {"standard_blob_tier": StandardBlobTier(tier)}


def _remote(props) -> RemoteBlob:
    md5 = props.content_settings.content_md5
    written = props.last_modified
    return RemoteBlob(props.size, bytes(md5) if md5 else None, stored_mtime(props.metadata),
                      is_folder_marker(props.metadata),
                      calendar.timegm(written.utctimetuple()) * 10**9 + written.microsecond * 1000 if written else None,
                      getattr(props, "version_id", None), getattr(props, "etag", None),
                      tier_name(getattr(props, "blob_tier", None)))


def _if_match(etag: str | None) -> dict:
    """The SDK's keywords for If-Match: `etag` (nothing without one)."""
    if not etag:
        return {}
    from azure.core import MatchConditions

    return dict(etag=etag, match_condition=MatchConditions.IfNotModified)


def _content_settings(md5: bytes | None, content_type: str):
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_type=content_type, content_md5=bytearray(md5) if md5 else None)


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
