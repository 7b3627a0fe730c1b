"""Back up one directory tree as N shards at once: one child run of the backup deployment
per shard, picked up by any worker of its pool (or one task per shard on a Dask cluster),
each retried on its own, and one summary of them all.

    python flows/backup_sharded.py ROOT --shards N [--shard-by path|top-level-folder] ...
"""

import importlib
import sys
import time
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect import flow

from site_backup.destination import ContainerName, Destination
from site_backup.in_flight import FILES_IN_FLIGHT
from site_backup.retry import RetryPolicy
from site_backup.sharded import ShardedSummary, combine
from site_backup.shards import Shard, check_shards
from site_backup.tiers import check_access_tier
from tasks.history import commit_run_history, open_run_history, releases_run_history
from tasks.prepare_destination import prepare_destination
from tasks.report import announce_sharded, backup_state, publish_sharded_summary
from tasks.shards import run_shards_on_dask, run_shards_on_workers

CHILD_DEPLOYMENT = "backup-site-content/shard"
SHARD_FLOW = "flows.backup_site_content.backup_site_content"  # what each Dask task runs


@flow(name="backup-site-sharded", persist_result=True)
@releases_run_history
def backup_site_sharded(
    root_directory: str,
    container: ContainerName = "backups",
    prefix: str = "",
    credentials_block: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    follow_symlinks: bool = False,
    dry_run: bool = False,
    refresh: bool = False,
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
    shards: int = 4,
    shard_by: Literal["path", "top-level-folder"] = "path",
    deployment: str = CHILD_DEPLOYMENT,
    shard_retries: int = 2,
    task_runner: Literal["workers", "dask"] = "workers",
    dask_address: str | None = None,
    access_tier: str | None = None,
) -> ShardedSummary:
    """Back up `root_directory` as `shards` parts at once and return one summary of them all,
    with a row per shard (its run, state, files and bytes).

    Args:
        root_directory: The folder to back up, as a path on every machine that runs a shard (each
            worker of the pool, or each Dask worker, must see the same tree there).
        container: Blob container, created when missing: 3-63 lowercase letters, digits and single
            hyphens.
        prefix: Blob-name prefix such as site/2026 (blob name = prefix/path); empty for none.
        credentials_block: Name of a saved prefect-azure AzureBlobStorageCredentials block; empty to
            use each worker's environment or the local Azurite.
        include: Globs of files to back up, e.g. *.html or /logs/**; empty for every file.
        exclude: Globs of files and folders to leave out, e.g. cache/**; exclude wins over include.
        follow_symlinks: Follow links whose target is inside the root.
        dry_run: Compare and report what would be uploaded; upload nothing.
        refresh: Ignore the checkpoints of earlier runs and compare every file with its blob again.
        checkpoint_block: Name of a saved AzureBlobStorageContainer block to keep checkpoints in: needed
            when shards run on several machines, so a shard retried on another machine resumes.
        checkpoint_days: Do not trust checkpoints older than this many days; empty: they never expire.
        files_per_batch: Most files one copy task handles (1 or more).
        mib_per_batch: About how many MiB one copy task handles (1 or more).
        files_in_flight: At most this many files copied at once in each shard's run (1 or more).
        single_put_mib: Files up to this many MiB go up in one request (1 or more).
        block_size_mib: Size of one block of a large file, in MiB (1 or more).
        blocks_in_flight: Blocks of one large file sent at once (1 or more).
        retries: Each shard run's storage retry budget (0 or more).
        storage_timeout: Seconds without a useful answer from storage before a shard's run stops.
        shards: How many parts to split the tree into (1 or more), e.g. the number of workers.
        shard_by: What the shard rule hashes: path (each file on its own, even parts) or
            top-level-folder (a whole top-level folder goes to one shard).
        deployment: The backup deployment the shards run as (flow name/deployment name); any worker
            of its pool picks them up.
        shard_retries: How many times a failed or crashed shard is started again (0 or more); its
            checkpoints make it resume.
        task_runner: workers (child runs of the deployment, on the pool's workers) or dask (one
            task per shard on a Dask cluster whose workers all see the tree).
        dask_address: The Dask scheduler (tcp://host:8786) for task_runner dask; empty for a
            temporary local cluster.
        access_tier: The access tier uploads are written in: Hot, Cool or Cold; empty for the account's
            default.
    """
    started = time.monotonic()
    check_shards(shards, shard_retries)
    destination = Destination.checked(container, prefix, credentials_block)
    parts = [Shard(k, shards, shard_by) for k in range(shards)]
    parameters = dict(
        root_directory=root_directory, container=container, prefix=prefix, credentials_block=credentials_block,
        include=include, exclude=exclude, follow_symlinks=follow_symlinks, dry_run=dry_run, refresh=refresh,
        checkpoint_block=checkpoint_block, checkpoint_days=checkpoint_days, files_per_batch=files_per_batch,
        mib_per_batch=mib_per_batch, files_in_flight=files_in_flight, single_put_mib=single_put_mib,
        block_size_mib=block_size_mib, blocks_in_flight=blocks_in_flight, retries=retries,
        storage_timeout=storage_timeout, access_tier=check_access_tier(access_tier),
    )
    announce_sharded(root_directory, shards, shard_by, destination, task_runner)
    # The run's lock keeps prunes out until its manifest is committed; each shard stages
    # its part of that manifest, and it is committed below once every shard has finished.
    policy = RetryPolicy.checked(retries, storage_timeout)
    destination, _ = prepare_destination(destination, policy=policy)
    history = open_run_history(destination, policy, dry_run)
    if history.manifest is not None:
        parameters["run_manifest"] = history.manifest.name
    if task_runner == "dask":
        outcomes = run_shards_on_dask(parameters, parts, shard_retries, dask_address, SHARD_FLOW)
    else:
        outcomes = run_shards_on_workers(deployment, parameters, parts, shard_retries)
    summary = combine(outcomes, root=root_directory, destination=destination.describe(), dry_run=dry_run,
                      duration_seconds=time.monotonic() - started)
    # One manifest for the whole tree, only when every shard finished (none when one failed).
    commit_run_history(history, summary, [s.manifest_part if s else None for _, s in outcomes])
    publish_sharded_summary(summary)
    return backup_state(summary)


if __name__ == "__main__":
    # The command line is the layer above the flows (docs/design.md, Layers): the script
    # loads it by name, so the flow module itself imports nothing above it.
    sys.exit(importlib.import_module("site_backup.cli").sharded_main(backup_site_sharded))
