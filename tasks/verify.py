"""Verify tasks: list the backup's blobs once, then check batches of files against them."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.destination import Destination, open_store
from site_backup.files import FileEntry
from site_backup.storage import RemoteBlob
from site_backup.verify import VerifyResult, remote_blobs, verify_batch as verify_files
from tasks.retry import QUICK_RETRIES


@task(name="list-blobs", cache_policy=NO_CACHE, **QUICK_RETRIES)
def list_blobs(destination: Destination) -> dict[str, RemoteBlob]:
    """Every blob under the destination's prefix, with size and Content-MD5."""
    return remote_blobs(open_store(destination), destination.prefix)


@task(name="verify-batch", cache_policy=NO_CACHE, **QUICK_RETRIES)
def verify_batch(root: str, batch: list[FileEntry], remote: dict[str, RemoteBlob], destination: Destination
                 ) -> VerifyResult:
    """Compare one batch of files with their blobs by size and MD5."""
    return verify_files(root, batch, remote, destination.prefix)
