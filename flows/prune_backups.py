"""Retention: delete the runs a policy does not keep, and the snapshots only they needed.

    python flows/prune_backups.py CONTAINER [--prefix P] --keep-last N [--keep-daily D]
        [--keep-weekly W] [--keep-monthly M] [--dry-run] [--json]
"""

import gc
import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":
    gc.disable()  # importing Prefect makes ~10^6 objects, none garbage; on again in run_flow

from prefect import flow

from site_backup.destination import ContainerName, Destination
from site_backup.retry import RetryPolicy
from site_backup.run_summaries import PruneSummary
from tasks.errors import flow_fails_on_configuration_error
from tasks.history import prune_history
from tasks.prepare_destination import prepare_destination
from tasks.report import announce_prune, publish_prune_summary


@flow(name="prune-backups", persist_result=True)
@flow_fails_on_configuration_error
def prune_backups(
    container: ContainerName = "backups",
    prefix: str = "",
    credentials_block: str | None = None,
    keep_last: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    dry_run: bool = False,
    retries: int = 100,
    storage_timeout: float = 60.0,
) -> PruneSummary:
    """Keep the runs of `prefix` the policy selects (restic's --keep-* rules); delete the
    other runs' manifests and every snapshot or attic copy under `prefix` that no kept run,
    nor any run of another destination, needs. Never a current blob; never while a backup
    or prune of an overlapping prefix (the same, an ancestor or a descendant) runs.

    Args:
        container: Blob container holding the backup.
        prefix: The backup's blob-name prefix; empty for none (a destination of its own: only its
            runs are pruned).
        credentials_block: Name of a saved prefect-azure AzureBlobStorageCredentials block; empty to
            use the worker's environment or the local Azurite.
        keep_last: Keep the N newest runs.
        keep_daily: Keep the newest run of each of the last N days (UTC).
        keep_weekly: Keep the newest run of each of the last N weeks.
        keep_monthly: Keep the newest run of each of the last N months.
        dry_run: Say what would be deleted; delete nothing.
        retries: Storage requests the run may try again in total (each success earns half one back);
            past it the run stops (0 or more).
        storage_timeout: Seconds without a useful answer from storage before the run stops, failed
            (more than 0).
    """
    destination = Destination.checked(container, prefix, credentials_block)
    policy = RetryPolicy.checked(retries, storage_timeout)
    destination, _ = prepare_destination(destination, create=False, policy=policy)
    announce_prune(destination, dict(last=keep_last, daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly),
                   dry_run)
    summary = prune_history(destination, keep_last, keep_daily, keep_weekly, keep_monthly, dry_run, policy)
    publish_prune_summary(summary)
    return summary


if __name__ == "__main__":
    # The command line is the layer above the flows (docs/design.md, Layers): the script
    # loads it by name, so the flow module itself imports nothing above it.
    sys.exit(importlib.import_module("site_backup.cli").prune_main(prune_backups))
