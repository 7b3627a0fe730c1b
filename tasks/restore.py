"""Restore tasks: plan from the blob listing, prepare the target, open the restore (its id,
kept in the checkpoint store), restore batches, make the folders, close the restore."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from site_backup.accounts import open_store
from site_backup.destination import Destination
from site_backup.history import open_history_store
from site_backup.history_restore import read_kept
from site_backup.names import blob_folder
from site_backup.restore import (
    BlobEntry,
    FolderEntry,
    RestoreBatchResult,
    RestorePlan,
    plan_restore,
    restore_batch as restore_files,
    restore_folders as make_folders,
)
from site_backup.restore_target import new_restore_id, prepare_target
from site_backup.retry import RetryPolicy
from site_backup.run_summaries import RestoreSummary
from site_backup.tiers import rehydrator
from tasks.checkpoints import checkpoint_key
from tasks.errors import task_reports_configuration_error
from tasks.outcomes import BatchIncomplete
from tasks.report import failed_state, final_state, publish_restore_summary
from tasks.retry import BATCH_RETRIES, earlier_attempts, end_attempt, run_budget


@task(name="list-backup", cache_policy=NO_CACHE)
@task_reports_configuration_error
def list_backup(destination: Destination, max_files: int, max_bytes: int, policy: RetryPolicy = RetryPolicy()
                ) -> RestorePlan:
    """The blobs under the prefix as batches to restore; unsafe names refused."""
    store = open_store(destination, run_budget(policy, destination.account_url))
    prefix = blob_folder(destination.prefix)
    return plan_restore(store.list(prefix), destination.prefix, max_files, max_bytes)


@task(name="prepare-target", cache_policy=NO_CACHE)
@task_reports_configuration_error
def prepare_restore_target(target_directory: str) -> tuple[str, str]:
    """The target's real path (created if missing) and what identifies the folder."""
    return prepare_target(target_directory)


def restore_session_key(context, parameters) -> str:
    """One record per (source, target folder): the id of its restore under way."""
    d: Destination = parameters["destination"]
    return checkpoint_key("restore-session",
                          ["restore-session", d.account_url, d.container, d.prefix, parameters["target_identity"]], ())


@task(name="open-restore", cache_key_fn=restore_session_key, persist_result=True)
def open_restore(target_identity: str, destination: Destination) -> str:
    """This restore's id: that of an unfinished restore of the same source into the same
    folder (read back from the checkpoint store, so it resumes from its checkpoints),
    else a new one. Nothing is kept in the target."""
    return new_restore_id()


# The same record written again with a new id, once a restore completed: the next restore
# into that folder checks every file instead of trusting this one's checkpoints.
close_restore = open_restore.with_options(name="close-restore", refresh_cache=True)


@task(name="restore-folders", cache_policy=NO_CACHE)
def restore_folders(target: str, folders: list[FolderEntry]) -> RestoreBatchResult:
    """Make the folders of folder-marker blobs, with their times, after the files."""
    return make_folders(target, folders)


def restore_checkpoint_key(context, parameters) -> str:
    """What the batch is (source, target, this restore's id, each blob's name, size and
    MD5), so only a resumed restore reuses it."""
    d: Destination = parameters["destination"]
    return checkpoint_key(
        "restore", ["restore", d.account_url, d.container, d.prefix, parameters["target"], parameters["restore_id"]],
        (f"{e.name}\0{e.size}\0{(e.content_md5 or b'').hex()}\0{e.mtime_ns}\0{e.where or ''}"
         for e in parameters["batch"]),
    )


@task(
    name="restore-batch",
    cache_key_fn=restore_checkpoint_key,
    persist_result=True,
    **BATCH_RETRIES,
)
def restore_batch(target: str, restore_id: str, batch: list[BlobEntry], destination: Destination,
                  overwrite: bool, policy: RetryPolicy = RetryPolicy(), rehydrate: str | None = None
                  ) -> RestoreBatchResult:
    """Restore one batch; raises BatchIncomplete (with the partial result) if any file failed.
    Archived files fail with the fix; with `rehydrate` (a priority), their rehydration is asked for."""
    context = TaskRunContext.get()
    earlier = earlier_attempts(context)
    todo = [e for e in batch if e.path not in earlier.finished]
    store = open_store(destination, run_budget(policy, destination.account_url))
    history_store = open_history_store(destination, store.retries.budget)
    outcomes = restore_files(target, todo, read_kept(store, history_store, destination.prefix), overwrite=overwrite,
                             rehydrate=rehydrator(store, history_store, destination.prefix, rehydrate) if rehydrate
                             else None)
    earlier.finished.update((o.path, o) for o in outcomes if o.status != "failed")
    by_path = {o.path: o for o in outcomes}
    by_path.update(earlier.finished)
    result = RestoreBatchResult.from_outcomes([by_path[e.path] for e in batch])
    end_attempt(context, failed=bool(result.failed))
    if result.failed:
        raise BatchIncomplete(result)
    return result


def failed_before_restore(exc: Exception, destination: Destination, target: str, started: float):
    """The end of a restore that could not list what to restore (storage gone, stopped), with
    a summary that says why."""
    summary = RestoreSummary(outcome="failed", error=str(exc), source=destination.describe(), target=target,
                             duration_seconds=time.monotonic() - started)
    publish_restore_summary(summary)
    return failed_state(summary)


def restore_end(summary: RestoreSummary, target_identity: str, destination: Destination):
    """A completed restore forgets its checkpoints; the summary is published; the run's end
    state: failed, incomplete (files failed or refused) or the summary."""
    if summary.outcome == "completed":
        close_restore(target_identity, destination)
    publish_restore_summary(summary)
    if summary.outcome == "failed":
        return failed_state(summary)
    if summary.outcome != "completed":
        return final_state(summary, "Incomplete",
                           f"{summary.files_failed} failed, {summary.files_refused} refused: see the summary")
    return summary
