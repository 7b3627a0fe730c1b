"""Restore a backup into a folder, byte for byte, with modification times; the mirror of
backup_site_content.

    python flows/restore_site_content.py CONTAINER TARGET [--prefix P] [--json] ...
"""

import gc
import importlib
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__" and "--list" in sys.argv[1:]:
    # A listing runs no flow: answered without importing Prefect (seconds of a run's start);
    # the command line is loaded by name as at the end of the file.
    sys.exit(importlib.import_module("site_backup.cli").restore_main(None))
if __name__ == "__main__":
    gc.disable()  # importing Prefect makes ~10^6 objects, none garbage; on again in run_flow

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from site_backup.destination import ContainerName, Destination
from site_backup.retry import RetryPolicy, RunStopped, StorageUnavailable, stops_on_termination
from site_backup.restore import RestoreBatchResult
from site_backup.restore_target import exclusive_target
from site_backup.run_summaries import RestoreSummary, summarize_restore
from site_backup.tiers import check_rehydrate
from site_backup.units import MiB
from tasks.errors import flow_fails_on_configuration_error
from tasks.history import plan_history_restore
from tasks.outcomes import batch_outcome
from tasks.prepare_destination import prepare_destination
from tasks.report import announce_restore
from tasks.restore import (failed_before_restore, list_backup, open_restore, prepare_restore_target, restore_batch,
                           restore_end, restore_folders)


@flow(name="restore-site-content", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=True)
@flow_fails_on_configuration_error
@stops_on_termination
def restore_site_content(
    container: ContainerName,
    target_directory: str,
    prefix: str = "",
    credentials_block: str | None = None,
    overwrite: bool = False,
    refresh: bool = False,
    files_per_batch: int = 1000,
    mib_per_batch: int = 256,
    retries: int = 100,
    storage_timeout: float = 60.0,
    run_id: str | None = None,
    as_of: str | None = None,
    rehydrate: str | None = None,
) -> RestoreSummary:
    """Restore every blob under `prefix` in `container` into `target_directory`; with
    `run_id` (or a unique start of it) or `as_of` (ISO 8601 or a date), the tree exactly as
    that backup run (the last one finished by then) saw it.

    Args:
        container: Blob container holding the backup.
        target_directory: Folder to restore into, on the machine that runs the flow (created when
            missing).
        prefix: Restore only the blobs under this prefix; it is not part of the restored paths.
        credentials_block: Name of a saved prefect-azure AzureBlobStorageCredentials block; empty to
            use the worker's environment (AZURE_STORAGE_CONNECTION_STRING,
            AZURE_STORAGE_ACCOUNT_URL) or the local Azurite.
        overwrite: Replace files in the target that differ from the backup (otherwise they are
            reported and kept).
        refresh: Ignore the checkpoints of an interrupted restore and check every file again.
        files_per_batch: Most files one restore task handles (1 or more).
        mib_per_batch: About how many MiB one restore task handles (1 or more).
        retries: Storage requests the run may try again in total (each success earns half one back);
            past it the run stops (0 or more).
        storage_timeout: Seconds without a useful answer from storage before the run stops, failed
            (more than 0).
        run_id: Restore the tree as this backup run saw it: the flow run ID of the backup run (on its
            page in the Prefect UI, under Runs of backup-site-content; on the command line
            `restore_site_content.py CONTAINER --list`), or a unique start of one; empty for the
            current blobs.
        as_of: Restore the tree as the last backup run finished by then saw it: ISO 8601 or a
            date (the end of that day, UTC); empty for the current blobs.
        rehydrate: Standard or High: ask Azure to rehydrate archived files (Archive tier) to Hot (up to
            15 hours at Standard, 1 hour at High); restore them with a run after that. Empty: archived
            files are reported with the fix, never read.
    """
    started = time.monotonic()
    destination = Destination.checked(container, prefix, credentials_block)
    policy = RetryPolicy.checked(retries, storage_timeout)
    rehydrate = check_rehydrate(rehydrate)
    destination, _ = prepare_destination(destination, create=False, policy=policy)
    target, target_identity = prepare_restore_target(target_directory)
    # One restore at a time into a folder: two would leave a tree that matches neither.
    with exclusive_target(target) as unguarded:
        if unguarded:
            get_run_logger().warning(unguarded)
        restore_id = open_restore(target_identity, destination)
        try:
            if run_id or as_of:
                plan = plan_history_restore(destination, run_id, as_of, files_per_batch, mib_per_batch * MiB,
                                            policy)
            else:
                plan = list_backup(destination, files_per_batch, mib_per_batch * MiB, policy)
        except (StorageUnavailable, RunStopped) as exc:  # the run ends, with a summary that says why
            return failed_before_restore(exc, destination, target, started)
        announce_restore(plan, destination, target)
        restore = restore_batch.with_options(refresh_cache=True) if refresh else restore_batch
        futures = restore.map(unmapped(target), unmapped(restore_id), plan.batches, unmapped(destination),
                              unmapped(overwrite), unmapped(policy), unmapped(rehydrate))
        results = [batch_outcome(f, b, lambda failed: RestoreBatchResult(failed=failed))
                   for f, b in zip(futures, plan.batches)]
        if plan.folders:
            folders = restore_folders(target, plan.folders)
            if folders.failed:  # made folders count nowhere; those that failed are failures
                results.append((folders, False))
        summary = summarize_restore(plan.refused, results, source=destination.describe(), target=target,
                                    duration_seconds=time.monotonic() - started)
        summary.restored_from = plan.run
        return restore_end(summary, target_identity, destination)


if __name__ == "__main__":
    # The command line is the layer above the flows (docs/design.md, Layers): the script
    # loads it by name, so the flow module itself imports nothing above it.
    sys.exit(importlib.import_module("site_backup.cli").restore_main(restore_site_content))
