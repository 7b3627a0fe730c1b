"""Retention: delete the runs a policy does not keep, and the snapshots only they needed.

    python flows/prune_backups.py CONTAINER [--prefix P] --keep-last N [--keep-daily D]
        [--keep-weekly W] [--keep-monthly M] [--dry-run] [--json]
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":
    gc.disable()  # importing Prefect makes ~10^6 objects, none garbage; on again in run_flow

from prefect import flow

from site_backup.destination import Destination
from site_backup.summary import PruneSummary
from tasks.history import prune_history
from tasks.prepare_destination import prepare_destination


@flow(name="prune-backups", persist_result=True)
def prune_backups(
    container: str = "backups",
    prefix: str = "",
    credentials_block: str | None = None,
    keep_last: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    dry_run: bool = False,
) -> PruneSummary:
    """Keep the runs the policy selects (restic's --keep-* rules); delete the other runs'
    manifests and every snapshot no kept run needs. Never a current blob; never while a
    backup of the same destination runs."""
    destination = Destination.checked(container, prefix, credentials_block)
    destination, _ = prepare_destination(destination, create=False)
    return prune_history(destination, keep_last, keep_daily, keep_weekly, keep_monthly, dry_run)


if __name__ == "__main__":
    from site_backup.cli import prune_main

    sys.exit(prune_main(prune_backups))
