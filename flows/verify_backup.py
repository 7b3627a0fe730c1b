"""Verify a backup: does every file under the root have a blob of the same size and MD5?

    python flows/backup_site_content.py ROOT --verify [--container C] [--prefix P] [--json]
"""

import time

from prefect import flow, unmapped
from prefect.utilities.annotations import quote
from prefect.task_runners import ThreadPoolTaskRunner

from site_backup.destination import ContainerName, Destination
from site_backup.retry import RetryPolicy, RunStopped, StorageUnavailable, stops_on_termination
from site_backup.run_summaries import VerifySummary, summarize_verify
from site_backup.units import MiB
from site_backup.verify import extra_blobs
from tasks.errors import flow_fails_on_configuration_error
from tasks.list_files import Walk, list_files, listed_whole
from tasks.prepare_destination import prepare_destination
from tasks.report import announce_verify, failed_state, final_state, publish_verify_summary
from tasks.verify import list_blobs, verify_batch


@flow(name="verify-backup", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=True)
@flow_fails_on_configuration_error
@stops_on_termination
def verify_backup(
    root_directory: str,
    container: ContainerName = "backups",
    prefix: str = "",
    credentials_block: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    follow_symlinks: bool = False,
    files_per_batch: int = 1000,
    mib_per_batch: int = 256,
    retries: int = 100,
    storage_timeout: float = 60.0,
) -> VerifySummary:
    """Compare the tree with the container without uploading: missing, different and
    extra blobs.

    Args:
        root_directory: The folder that was backed up, as a path on the machine that runs the flow.
        container: Blob container holding the backup (never created by verify).
        prefix: Blob-name prefix such as site/2026 (blob name = prefix/path); empty for none. At
            most 1,022 characters.
        credentials_block: Name of a saved prefect-azure AzureBlobStorageCredentials block; empty to
            use the worker's environment (AZURE_STORAGE_CONNECTION_STRING,
            AZURE_STORAGE_ACCOUNT_URL) or the local Azurite.
        include: Globs of files to back up, e.g. *.html or /logs/**; empty for every file. `*` stays
            in a folder, `**` crosses folders.
        exclude: Globs of files and folders to leave out, e.g. cache/**; exclude wins over include.
        follow_symlinks: Follow links whose target is inside the root (never outside it, never
            around a loop).
        files_per_batch: Most files one verify task checks (1 or more).
        mib_per_batch: About how many MiB one verify task reads (1 or more).
        retries: Storage requests the run may try again in total (each success earns half one back);
            past it the run stops (0 or more).
        storage_timeout: Seconds without a useful answer from storage before the run stops, failed
            (more than 0).
    """
    started = time.monotonic()
    destination = Destination.checked(container, prefix, credentials_block)
    policy = RetryPolicy.checked(retries, storage_timeout)
    # Verify compares the whole tree with the whole blob listing: it takes every batch at once.
    listing = listed_whole(Walk(list_files(
        root_directory, include or [], exclude or [], follow_symlinks, files_per_batch, mib_per_batch * MiB
    )))
    destination, _ = prepare_destination(destination, create=False, policy=policy)
    announce_verify(listing, destination)
    try:
        remote = list_blobs(destination, policy)
    except (StorageUnavailable, RunStopped) as exc:  # the run ends, with a summary that says why
        summary = VerifySummary(outcome="failed", error=str(exc), root=listing.root,
                                destination=destination.describe(), duration_seconds=time.monotonic() - started)
        publish_verify_summary(summary)
        return failed_state(summary)
    # quote: Prefect would otherwise walk every blob of the listing for each batch it submits.
    futures = verify_batch.map(unmapped(listing.root), listing.batches, unmapped(quote(remote)), unmapped(destination))
    summary = summarize_verify(
        listing, futures.result(), extra_blobs(remote, listing.batches, destination.prefix),
        root=listing.root, destination=destination.describe(), duration_seconds=time.monotonic() - started,
    )
    publish_verify_summary(summary)
    if summary.outcome != "verified":
        return final_state(summary, "Differences",
                           f"{summary.files_missing} missing, {summary.files_different} different")
    return summary
