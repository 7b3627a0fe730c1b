"""Verify tasks: list the backup's blobs once, then check batches of files against them."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.accounts import open_store
from site_backup.destination import Destination
from site_backup.files import FileEntry
from site_backup.storage import RemoteBlob
from site_backup.verify import VerifyResult, remote_blobs, verify_batch as verify_files
from site_backup.retry import RetryPolicy
from tasks.errors import task_reports_configuration_error
from tasks.retry import run_budget


@task(name="list-blobs", cache_policy=NO_CACHE)
@task_reports_configuration_error
def list_blobs(destination: Destination, policy: RetryPolicy = RetryPolicy()) -> dict[str, RemoteBlob]:
    """Every blob under the destination's prefix, with size and Content-MD5 (the run's
    storage retry policy decides retries)."""
    return remote_blobs(open_store(destination, run_budget(policy, destination.account_url)), destination.prefix)


@task(name="verify-batch", cache_policy=NO_CACHE)
def verify_batch(root: str, batch: list[FileEntry], remote: dict[str, RemoteBlob], destination: Destination
                 ) -> VerifyResult:
    """Compare one batch of files with their blobs by size and MD5."""
    return verify_files(root, batch, remote, destination.prefix)
