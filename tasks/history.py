"""History tasks: open a run's manifest (and its lock), commit it, plan the restore of an
earlier run, prune."""

from __future__ import annotations

import datetime as dt
import time
import uuid

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.accounts import open_store
from site_backup.destination import Destination
from site_backup.retry import RetryPolicy
from site_backup.errors import describe
from site_backup.files import FileListing
from site_backup.mirror import MirrorResult, delete_missing
from site_backup.history import (ManifestWriter, RunRecord, iso, list_runs, open_history_store, pick_run,
                                 plan_run_restore)
from site_backup.prune import backup_lock, describe_run, prune
from site_backup.restore import RestorePlan
from site_backup.summary import BackupSummary, PruneSummary
from tasks.errors import task_reports_configuration_error
from tasks.retry import run_budget


@task(name="open-manifest", cache_policy=NO_CACHE, persist_result=False)
def open_manifest(destination: Destination, policy: RetryPolicy = RetryPolicy()) -> ManifestWriter | None:
    """A writer for this run's manifest, named after the flow run, and the run's lock.
    None, with a warning, when the credentials may not write the history container (a SAS
    for the backup's container only): the backup itself goes on, without history."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    run_id = str(flow_run.id or uuid.uuid4())
    budget = run_budget(policy, destination.account_url)  # storage that stops answering ends the run here too
    history = open_history_store(destination, budget)
    manifest = ManifestWriter(history, destination.prefix, run_id, dt.datetime.now(dt.timezone.utc),
                              backup_store=open_store(destination, budget))
    try:
        # Held until the manifest is written, so a prune of this destination waits for the run.
        manifest.lock = backup_lock(history, destination.prefix, run_id)
    except Exception as exc:
        if getattr(exc, "status_code", None) != 403:
            raise
        get_run_logger().warning(
            "no history for this run: the credentials may not write the container %r (%s); give them "
            "create and write access to it to keep run manifests", history.container_name, describe(exc))
        return None
    return manifest


@task(name="write-manifest", cache_policy=NO_CACHE, persist_result=False)
def finish_manifest(manifest: ManifestWriter, summary: BackupSummary) -> RunRecord | None:
    """Commit the run's manifest, with its summary: from now on the run is in the history.
    A failed run claims nothing: no manifest. A manifest that cannot be written (after
    the storage requests' own retries) costs the run its history, not its outcome: a warning says why. The
    run's lock is released at the end either way."""
    from prefect import get_run_logger
    try:
        if summary.outcome != "failed" and not manifest.broken:
            record = manifest.finish(summary.model_dump(mode="json"), summary.root, summary.destination,
                                     dt.datetime.now(dt.timezone.utc))
            _release(manifest)
            return record
    except Exception as exc:
        manifest.broken = describe(exc)
    if manifest.broken:
        get_run_logger().warning("no manifest for this run (its files are backed up): %s", manifest.broken)
    _release(manifest)
    return None


def _release(manifest: ManifestWriter) -> None:
    """Release the run's lock; say so when its blob may not be deleted (a SAS without the
    delete permission leaves one behind per run, which prune cannot remove either)."""
    from prefect import get_run_logger

    refused = manifest.lock.release()
    if refused is not None:
        get_run_logger().warning(
            "the run's lock blob %s could not be deleted (%s): give the credentials the delete permission "
            "(a SAS needs d); the lease ends by itself within a minute", manifest.lock.name, describe(refused))


@task(name="delete-missing", cache_policy=NO_CACHE, persist_result=False)
def delete_missing_files(destination: Destination, listing: FileListing, walked: list[str], include: list[str],
                         exclude: list[str], dry_run: bool, blocked: str, policy: RetryPolicy = RetryPolicy()
                         ) -> MirrorResult:
    """Mirror mode: delete the blobs of files the tree no longer has (`walked`: the paths the
    walk saw), their content kept in history first (site_backup/mirror.py). `blocked` says
    why this run may not delete."""
    from prefect import get_run_logger

    if blocked:
        get_run_logger().warning("--delete-missing: deleted nothing: %s", blocked)
        return MirrorResult(blocked=blocked)
    budget = run_budget(policy, destination.account_url)
    store = open_store(destination, budget)
    result = delete_missing(store, open_history_store(destination, budget), destination.prefix, listing,
                            include=include, exclude=exclude, dry_run=dry_run, walked=walked)
    if result.deleted and not dry_run:
        try:
            store.touch_container()
        except Exception as exc:
            get_run_logger().warning(
                "--delete-missing: could not mark the container as changed (%s): run the next backup with "
                "--refresh, or checkpoints of earlier runs may vouch for blobs deleted now", describe(exc))
    get_run_logger().info("--delete-missing: %s %d file(s) no longer in the tree%s",
                          "would delete" if dry_run else "deleted", len(result.deleted),
                          f", {len(result.failed)} could not be deleted" if result.failed else "")
    return result


@task(name="prune-history", cache_policy=NO_CACHE)
@task_reports_configuration_error
def prune_history(destination: Destination, keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int,
                  dry_run: bool, policy: RetryPolicy = RetryPolicy()) -> PruneSummary:
    """Apply the retention policy to the destination's runs and snapshots."""
    started = time.monotonic()
    budget = run_budget(policy, destination.account_url)
    plan, stale = prune(open_history_store(destination, budget), open_store(destination, budget), destination.prefix,
                        keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
                        keep_monthly=keep_monthly, dry_run=dry_run)
    policy = ", ".join(f"--keep-{name} {n}" for name, n in (("last", keep_last), ("daily", keep_daily),
                                                           ("weekly", keep_weekly), ("monthly", keep_monthly)) if n)
    return PruneSummary(
        dry_run=dry_run, destination=destination.describe(), policy=policy,
        runs_total=len(plan.kept) + len(plan.deleted), runs_kept=len(plan.kept), manifests_deleted=len(plan.deleted),
        snapshots_kept=plan.snapshots_kept, snapshots_deleted=len(plan.snapshots) + len(plan.attic),
        bytes_freed=(sum(size for _, _, size in plan.snapshots + plan.attic)
                     + sum(r.manifest_size for r in plan.deleted)),
        stale_locks_removed=0 if dry_run else len(stale), duration_seconds=round(time.monotonic() - started, 3),
        kept=[describe_run(r) for r in plan.kept], deleted=[describe_run(r) for r in plan.deleted])


@task(name="plan-run-restore", cache_policy=NO_CACHE)
@task_reports_configuration_error
def plan_history_restore(destination: Destination, run_id: str | None, as_of: str | None, max_files: int,
                         max_bytes: int, policy: RetryPolicy = RetryPolicy()) -> RestorePlan:
    """The files of the chosen run, each from where its content is kept now."""
    budget = run_budget(policy, destination.account_url)
    history = open_history_store(destination, budget)
    run = pick_run(list_runs(history, destination.prefix), run_id, as_of)
    plan = plan_run_restore(history, run, open_store(destination, budget), destination.prefix, max_files, max_bytes)
    plan.run = f"backup run {run.run_id}, finished {iso(run.finished)}"
    return plan
