"""History tasks: open a run's manifest, commit it, plan the restore of an earlier run."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.destination import Destination, open_store
from site_backup.history import ManifestWriter, RunRecord, list_runs, open_history_store, pick_run, plan_run_restore
from site_backup.restore import RestorePlan
from site_backup.summary import BackupSummary
from tasks.retry import QUICK_RETRIES


@task(name="open-manifest", cache_policy=NO_CACHE, persist_result=False)
def open_manifest(destination: Destination) -> ManifestWriter:
    """A writer for this run's manifest, named after the flow run (nothing is written yet)."""
    from prefect.runtime import flow_run

    run_id = str(flow_run.id or uuid.uuid4())
    return ManifestWriter(open_history_store(destination), destination.prefix, run_id,
                          dt.datetime.now(dt.timezone.utc), backup_store=open_store(destination))


@task(name="write-manifest", cache_policy=NO_CACHE, persist_result=False, **QUICK_RETRIES)
def finish_manifest(manifest: ManifestWriter, summary: BackupSummary) -> RunRecord:
    """Commit the run's manifest, with its summary: from now on the run is in the history."""
    return manifest.finish(summary.model_dump(mode="json"), summary.root, summary.destination,
                           dt.datetime.now(dt.timezone.utc))


@task(name="plan-run-restore", cache_policy=NO_CACHE, **QUICK_RETRIES)
def plan_history_restore(destination: Destination, run_id: str | None, as_of: str | None, max_files: int,
                         max_bytes: int) -> RestorePlan:
    """The files of the chosen run, each from where its content is kept now."""
    history = open_history_store(destination)
    run = pick_run(list_runs(history, destination.prefix), run_id, as_of)
    return plan_run_restore(history, run, open_store(destination), destination.prefix, max_files, max_bytes)
