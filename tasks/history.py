"""History tasks: open a run's history (its lock and manifest) and commit it, plan the restore
of an earlier run, prune."""

from __future__ import annotations

import functools
import time
import uuid
from contextvars import ContextVar
from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.accounts import open_store
from site_backup.destination import Destination
from site_backup.retry import RetryPolicy
from site_backup.errors import describe
from site_backup.files import FileListing
from site_backup.mirror import DEFAULT_MAX_DELETE, MirrorResult, delete_missing
from site_backup.history import RunRecord, history_container, iso, list_runs, open_history_store, pick_run
from site_backup.history_restore import plan_run_restore
from site_backup.prune import describe_run, prune
from site_backup.run_history import RunHistory
from site_backup.restore import RestorePlan
from site_backup.units import count
from site_backup.run_summaries import PruneSummary
from site_backup.summary import BackupSummary
from tasks.errors import task_reports_configuration_error
from tasks.retry import run_budget


_opened: ContextVar[list | None] = ContextVar("run_histories", default=None)


def releases_run_history(fn):
    """For a flow function: whichever way it ends (return, configuration error, exception,
    SIGTERM, Ctrl-C), the run history it opened is closed, its lock released."""

    # The wrapper refers to module functions only: Dask pickles the flow with its context,
    # and a ContextVar it referred to directly cannot be pickled.
    @functools.wraps(fn)
    def flow_body(*args, **kwargs):
        token = _track_histories()
        hurried = True  # an exception: storage may be what failed, so the release does not wait on it
        try:
            result = fn(*args, **kwargs)
            hurried = False
            return result
        finally:
            _close_histories(token, hurried)

    return flow_body


def _track_histories():
    return _opened.set([])


def _close_histories(token, hurried: bool) -> None:
    opened = _opened.get() or []
    _opened.reset(token)
    for history in opened:
        history.close(hurried=hurried)


def open_run_history(destination: Destination, policy: RetryPolicy, dry_run: bool, shard=None,
                     run_manifest: str | None = None) -> RunHistory:
    """The run's history (lock and manifest; none for a dry run), closed by the flow's
    @releases_run_history however the flow ends. A shard of a sharded run stages its part
    of `run_manifest`."""
    history = RunHistory() if dry_run else open_history(destination, policy, shard, run_manifest)
    if _opened.get() is not None:
        _opened.get().append(history)
    return history


def _lock_store(destination: Destination, storage_timeout: float, budget):
    """The history store for one lock request, no more patient than the run's storage timeout."""
    return open_history_store(destination, budget.within(storage_timeout))


@task(name="open-manifest", cache_policy=NO_CACHE, persist_result=False)
@task_reports_configuration_error
def open_history(destination: Destination, policy: RetryPolicy = RetryPolicy(), shard=None,
                 run_manifest: str | None = None) -> RunHistory:
    """Take the run's lock (waiting for, or refused by, a prune of an overlapping prefix)
    and start its manifest, named after the flow run. Without either, with a warning, when
    the credentials may not write the history container (a SAS for the backup's container
    only): the backup itself goes on."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    logger = get_run_logger()
    run_id = str(flow_run.id or uuid.uuid4())
    budget = run_budget(policy, destination.account_url)  # storage that stops answering ends the run here too
    try:
        return RunHistory.open(open_history_store(destination, budget),
                               partial(_lock_store, destination, policy.storage_timeout),
                               open_store(destination, budget), destination.prefix, run_id, shard=shard,
                               run_manifest=run_manifest, warn=logger.warning)
    except Exception as exc:
        if getattr(exc, "status_code", None) != 403:
            raise
        logger.warning("no history for this run: the credentials may not write the container %r (%s); give them "
                       "create and write access to it to keep run manifests",
                       history_container(destination.container), describe(exc))
        return RunHistory()


def commit_run_history(history: RunHistory, summary: BackupSummary, parts: list | None = None) -> RunRecord | None:
    """Commit the run's manifest, with its summary (from now on the run is in the
    history; a failed run claims nothing), and release the run's lock. A shard of a
    sharded run stages its part instead, and its summary carries it (`manifest_part`) to
    the sharded run, which commits the manifest of them all (`parts`)."""
    if history.manifest is None:  # a dry run, or no history: no task run to show
        history.close()
        return None
    if history.part:
        summary.manifest_part = stage_manifest_part(history, summary)
        return None
    return write_manifest(history, summary, parts)


@task(name="write-manifest", cache_policy=NO_CACHE, persist_result=False)
def write_manifest(history: RunHistory, summary: BackupSummary, parts: list | None = None) -> RunRecord | None:
    """The commit, as a task run of its own (its requests show in the run's timeline)."""
    return history.commit(summary, parts)


@task(name="stage-manifest-part", cache_policy=NO_CACHE, persist_result=False)
def stage_manifest_part(history: RunHistory, summary: BackupSummary) -> dict | None:
    """A shard's part of the sharded run's manifest, staged (not committed)."""
    return history.stage_part(summary)


@task(name="delete-missing", cache_policy=NO_CACHE, persist_result=False)
def delete_missing_files(destination: Destination, listing: FileListing, walked: list[str], include: list[str],
                         exclude: list[str], dry_run: bool, blocked: str, policy: RetryPolicy = RetryPolicy(),
                         max_delete: int | str = DEFAULT_MAX_DELETE) -> MirrorResult:
    """Mirror mode: delete the blobs of files the tree no longer has (`walked`: the paths the
    walk saw), their content kept in history first (site_backup/mirror.py). `blocked` says
    why this run may not delete; `max_delete` how many it may."""
    from prefect import get_run_logger

    if blocked:
        get_run_logger().warning("--delete-missing: deleted nothing: %s", blocked)
        return MirrorResult(blocked=blocked)
    budget = run_budget(policy, destination.account_url)
    store = open_store(destination, budget)
    result = delete_missing(store, open_history_store(destination, budget), destination.prefix, listing,
                            include=include, exclude=exclude, dry_run=dry_run, walked=walked, max_delete=max_delete)
    if result.refused:
        get_run_logger().error("--delete-missing: deleted nothing%s: %s", " (dry run)" if dry_run else "",
                               result.refused)
        return result
    for kept in result.changed:
        get_run_logger().warning("--delete-missing: %s %s", kept.path, kept.reason)
    if result.deleted and not dry_run:
        try:
            store.touch_container()
        except Exception as exc:
            get_run_logger().warning(
                "--delete-missing: could not mark the container as changed (%s): run the next backup with "
                "--refresh, or checkpoints of earlier runs may vouch for blobs deleted now", describe(exc))
    get_run_logger().info("--delete-missing: %s %s no longer in the tree%s",
                          "would delete" if dry_run else "deleted", count(len(result.deleted), "file"),
                          f", {len(result.failed)} could not be deleted" if result.failed else "")
    return result


@task(name="prune-history", cache_policy=NO_CACHE)
@task_reports_configuration_error
def prune_history(destination: Destination, keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int,
                  dry_run: bool, policy: RetryPolicy = RetryPolicy()) -> PruneSummary:
    """Apply the retention policy to the destination's runs and snapshots."""
    started = time.monotonic()
    budget = run_budget(policy, destination.account_url)
    from prefect.runtime import flow_run

    plan, stale = prune(open_history_store(destination, budget), open_store(destination, budget), destination.prefix,
                        open_lock_store=partial(_lock_store, destination, policy.storage_timeout),
                        run_id=str(flow_run.id or uuid.uuid4()), keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
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
