"""Back up a directory tree to Azure Blob Storage: the Prefect port of the Durable
Functions fan-out/fan-in sample E2_BackupSiteContent.

    python flows/backup_site_content.py ROOT [--container C] [--prefix P] [--json] ...
"""

import gc
import importlib
import sys
import time
from functools import partial
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":
    gc.disable()  # importing Prefect makes ~10^6 objects, none garbage; on again in run_flow
    # Storage is checked and listed while Prefect imports (site_backup/cli_head_start.py).
    importlib.import_module("site_backup.cli_head_start").begin(sys.argv[1:])

from prefect import flow

from site_backup.copy import CopyOptions
from site_backup.destination import ContainerName
from site_backup.in_flight import FILES_IN_FLIGHT
from site_backup.mirror import DEFAULT_MAX_DELETE
from site_backup.retry import RunStopped, StorageUnavailable, stops_on_termination
from site_backup.summary import BackupSummary
from site_backup.units import MiB
from tasks.backup_run import FanIn, backup_end, checked_input, copy_order, failed_before_copy, mirror_deletions
from tasks.confirm import confirmed, read_destination
from tasks.copy_batch import CopyTaskRunner, copy_as_walked, shared_listing, with_checkpoints
from tasks.errors import flow_fails_on_configuration_error
from tasks.history import commit_run_history, open_run_history, releases_run_history
from tasks.list_files import Walk, list_files
from tasks.prepare_destination import prepare_checkpoints, prepare_destination
from tasks.report import StopReport, announce_backup, ends_cancelled_when_stopped, report_on_stop


@flow(name="backup-site-content", task_runner=CopyTaskRunner(max_workers=4), persist_result=True)
@flow_fails_on_configuration_error
@ends_cancelled_when_stopped
@stops_on_termination
@releases_run_history
def backup_site_content(
    root_directory: str,
    container: ContainerName = "backups",
    prefix: str = "",
    credentials_block: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    follow_symlinks: bool = False,
    dry_run: bool = False,
    refresh: bool = False,
    delete_missing: bool = False,
    max_delete: int | str = DEFAULT_MAX_DELETE,
    checkpoint_block: str | None = None,
    checkpoint_days: float | None = None,
    files_per_batch: int = 1000,
    mib_per_batch: int = 256,
    files_in_flight: int = FILES_IN_FLIGHT,
    single_put_mib: int = 64,
    block_size_mib: int = 8,
    blocks_in_flight: int = 4,
    retries: int = 100,
    storage_timeout: float = 60.0,
    shard: str | None = None,
    shard_by: Literal["path", "top-level-folder"] = "path",
    access_tier: str | None = None,
    run_manifest: str | None = None,
) -> BackupSummary:
    """List every file under `root_directory`, copy them to `container` in parallel
    batches, and return the summary (its `bytes_uploaded` is the sample's output).

    Args:
        root_directory: The folder to back up, as a path on the machine that runs the flow (the
            worker's, for a deployment run).
        container: Blob container, created when missing: 3-63 lowercase letters, digits and single
            hyphens.
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
        dry_run: Compare and report what would be uploaded; upload nothing and write no checkpoint.
        refresh: Ignore the checkpoints of earlier runs and compare every file with its blob again.
        delete_missing: Mirror mode: after a run with no failure, delete the blobs of files no longer in
            the tree (files left out by include/exclude are kept); their content stays in history, so an
            earlier run still restores them. A dry run lists what would be deleted.
        max_delete: With delete_missing: the most files one run may delete, a count (100) or a share of
            the destination's files (50%); past it, or when the walk found no file at all (an unmounted
            share), nothing is deleted and the run fails. 100% lifts both checks.
        checkpoint_block: Name of a saved AzureBlobStorageContainer block to keep checkpoints in, so
            a run on another worker resumes too; empty for the local Prefect home.
        checkpoint_days: Do not trust checkpoints older than this many days; empty: they never
            expire.
        files_per_batch: Most files one copy task handles (a whole number, 1 or more).
        mib_per_batch: About how many MiB one copy task handles (1 or more).
        files_in_flight: At most this many files copied at once across all copy tasks (1 or
            more); the run starts at 16 and adapts below it to what storage answers.
        single_put_mib: Files up to this many MiB go up in one request; larger ones in blocks (1 or
            more).
        block_size_mib: Size of one block of a large file, in MiB (1 or more).
        blocks_in_flight: Blocks of one large file sent at once (1 or more).
        retries: Storage requests the run may try again in total (each success earns half one back);
            past it the run stops (0 or more).
        storage_timeout: Seconds without a useful answer from storage before the run stops, failed
            (more than 0).
        shard: Back up only shard K of N, written K/N (0 <= K < N): the files whose path hashes to K
            modulo N (rclone's --hash-filter rule); empty for the whole tree. The flow
            backup-site-sharded starts one run per shard.
        shard_by: What the shard rule hashes: path (each file on its own) or top-level-folder (a whole
            top-level folder goes to one shard, and the others never walk it).
        access_tier: The access tier uploads are written in: Hot, Cool or Cold; empty for the account's
            default. Blobs this run does not write keep theirs.
        run_manifest: Set by backup-site-sharded for its shards: the sharded run's manifest, which this
            shard stages its files into; empty for a run of its own.
    """
    started = time.monotonic()
    destination, policy, part, access_tier = checked_input(container, prefix, credentials_block, retries, storage_timeout,
                                                           shard, shard_by, delete_missing, max_delete, access_tier)
    # A generator task: each batch is walked when the flow asks for it, so copies start
    # after the first batch and memory holds the batches in flight, not the tree.
    walk = Walk(list_files(root_directory, include or [], exclude or [], follow_symlinks, files_per_batch,
                           mib_per_batch * MiB, shard=part))
    try:
        listing = walk.listing  # the root and its identity now; the counts grow as the walk goes
        destination, empty = prepare_destination(destination, policy=policy)
        try:  # the lock, before any snapshot; the manifest, staged as batches finish, committed at the end
            history = open_run_history(destination, policy, dry_run, part, run_manifest)
        except (StorageUnavailable, RunStopped) as exc:
            return failed_before_copy(exc, listing, destination, dry_run, started)
        # Read while the copies start, unless the command line read it first (site_backup/cli_head_start.py):
        # what checkpoints claim is confirmed against it, and the copies compare with it.
        listed = None if empty or dry_run else read_destination.submit(destination, policy)
        if checkpoint_block:
            prepare_checkpoints(checkpoint_block, policy)
        options = CopyOptions(dry_run=dry_run, check_remote=not empty, follow_symlinks=follow_symlinks,
                              files_in_flight=files_in_flight, single_put_size=single_put_mib * MiB,
                              block_size=block_size_mib * MiB, blocks_in_flight=blocks_in_flight,
                              root_id=listing.root_id, access_tier=access_tier)
        batches, ahead = copy_order(walk, dry_run)
        announce_backup(listing, destination, dry_run=dry_run, empty=empty)
        fan_in = FanIn(listing, history, keep_paths=delete_missing)
        # An empty prefix holds none of what earlier checkpoints describe: make new ones.
        copy = with_checkpoints(refresh or empty, checkpoint_block, checkpoint_days, dry_run)
        submit = partial(copy.submit, listing.root, destination=destination, options=options, policy=policy,
                         listed=shared_listing(listed))
        report_on_stop(StopReport(fan_in.tally, listing, destination.describe(), dry_run, started, fan_in.shown))
        copied = copy_as_walked(submit, batches, ahead, until=fan_in.stopping)
        # A batch from a checkpoint counts only once this run's listing shows its blobs.
        for batch, result, cached in confirmed(copied, copy, listing.root, destination, options, policy, listed):
            fan_in.add(batch, result, cached)
    finally:
        # Ends list-files when the run stopped early (in its own context, or Prefect's clean-up fails).
        walk.close()
    summary = fan_in.summary(destination, dry_run, part, started)
    if delete_missing:
        summary = mirror_deletions(summary, fan_in, destination, include or [], exclude or [], dry_run, policy,
                                   max_delete)
    commit_run_history(history, summary)  # none for a failed run: it claims nothing
    return backup_end(summary)

if __name__ == "__main__":
    # The command line is the layer above the flows (docs/design.md, Layers): the script
    # loads it by name, so the flow module itself imports nothing above it.
    sys.exit(importlib.import_module("site_backup.cli").main(backup_site_content))
