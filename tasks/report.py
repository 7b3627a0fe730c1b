"""Show a run's progress and summary in the Prefect UI (artifacts)."""

from __future__ import annotations

import functools
import time
from contextvars import ContextVar
from dataclasses import dataclass
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)

from prefect.states import Cancelled, Completed, Failed

from site_backup.retry import STOP, stop_reason
from site_backup.run_summaries import PruneSummary, RestoreSummary, VerifySummary
from site_backup.summary import BackupSummary, BackupTally, RunFailed
from site_backup.units import count, human_bytes


class ProgressArtifact:
    """The run's progress artifact. Each update is an API call, so it is updated at most
    once a second (and at the end), not after every batch. Its metadata carries the counts
    (`progress_counts`): the HTTP status API returns them as the run's customStatus."""

    def __init__(self, files_total: int, bytes_total: int, every_seconds: float = 1.0, counting: bool = False):
        self.files_total, self.bytes_total, self.every = files_total, bytes_total, every_seconds
        self.counting = counting  # the walk goes on: the totals are those found so far
        self.halted = False  # the run was stopped (cancelled, SIGTERM, Ctrl-C)
        self.files_done = self.bytes_done = 0
        self.id: UUID = self._create()  # the totals, readable before the first batch ends
        self.last = time.monotonic()

    def expect(self, files_total: int, bytes_total: int, counting: bool) -> None:
        """The totals found so far by a walk that is still going (counting), or in the end."""
        self.files_total, self.bytes_total, self.counting = files_total, bytes_total, counting

    def advance(self, files: int, size: int) -> None:
        self.files_done += files
        self.bytes_done += size
        finished = self.files_done >= self.files_total and not self.counting
        if finished or time.monotonic() - self.last >= self.every:
            done, total = (self.bytes_done, self.bytes_total) if self.bytes_total else (self.files_done, self.files_total)
            self._update(100.0 * done / total if total else 100.0)
            self.last = time.monotonic()

    def stopped(self) -> None:
        """Show that the run stopped here: what was done, and no more counting."""
        self.counting, self.halted = False, True
        done, total = (self.bytes_done, self.bytes_total) if self.bytes_total else (self.files_done, self.files_total)
        self._update(100.0 * done / total if total else 0.0)

    def _create(self) -> UUID:
        # create_progress_artifact cannot set metadata: this is its request, with it (one, not two).
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate
        from prefect.utilities.context import get_task_and_flow_run_ids

        task_run_id, flow_run_id = get_task_and_flow_run_ids()
        return get_client(sync_client=True).create_artifact(artifact=ArtifactCreate(
            type="progress", key="backup-progress", data=0.0, description=self._text(), metadata_=self._counts(),
            flow_run_id=flow_run_id, task_run_id=task_run_id)).id

    def _counts(self) -> dict[str, str]:
        return progress_counts(self.files_done, self.files_total, self.bytes_done, self.bytes_total)

    def _update(self, percent: float) -> None:
        # update_progress_artifact cannot set metadata; this is the same request with it.
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        get_client(sync_client=True).update_artifact(
            artifact_id=self.id, artifact=ArtifactUpdate(data=percent, description=self._text(), metadata_=self._counts()))

    def _text(self) -> str:
        more = " found so far (counting)" if self.counting else ""
        text = (f"{self.files_done} of {count(self.files_total, 'file')}, "
                f"{human_bytes(self.bytes_done)} of {human_bytes(self.bytes_total)}{more}")
        return f"stopped at {text}: run again or Retry to resume" if self.halted else text


def progress_counts(files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> dict[str, str]:
    """The progress artifact's metadata (Prefect stores metadata as strings)."""
    return {"files_done": str(files_done), "files_total": str(files_total),
            "bytes_done": str(bytes_done), "bytes_total": str(bytes_total)}


def final_state(summary, name: str, message: str):
    """The summary as the run's result. A run that is not clean still completes (the
    summary is its result) but under its own state name, so the UI does not show it as
    a plain success."""
    return Completed(data=summary, name=name, message=message)


def failed_state(summary):
    """A run that could not go on: Failed, with the summary inside the exception it raises."""
    return Failed(data=RunFailed(summary), message=summary.error)


def backup_state(summary):
    """A backup's (or sharded backup's) end state: failed, incomplete (some files failed)
    or the summary."""
    if summary.outcome == "failed":
        return failed_state(summary)
    if summary.files_failed:
        return final_state(summary, "Incomplete", f"{count(summary.files_failed, 'file')} failed: run again to retry them")
    return summary


def announce_backup(listing, destination, *, dry_run: bool, empty: bool) -> None:
    """One log line saying what this run will back up, before any copy starts. When the
    walk is still going (a tree larger than the look-ahead), it says what was counted so
    far, and `announce_listed` gives the totals when the walk ends."""
    from prefect import get_run_logger

    if listing.walking:
        get_run_logger().info(
            "%s %s to %s%s: counting files as the copies go (%s, %s so far)",
            "Dry run of" if dry_run else "Backing up", listing.root, destination.describe(),
            " (empty: no comparison needed)" if empty else "", count(listing.files, "file"), human_bytes(listing.bytes))
        return
    get_run_logger().info(
        "%s %s (%s) to %s%s",
        "Dry run of" if dry_run else "Backing up", listing.root, _listing_counts(listing), destination.describe(),
        " (empty: no comparison needed)" if empty else "")


def announce_listed(listing) -> None:
    """The totals of a walk that ended after the copies had started, as one log line."""
    from prefect import get_run_logger

    get_run_logger().info("Listed %s: %s", listing.root, _listing_counts(listing))


def _listing_counts(listing) -> str:
    return (f"{count(listing.files, 'file')}, {human_bytes(listing.bytes)}, in {count(listing.batch_count, 'batch')}; "
            f"{len(listing.skipped) + len(listing.failed)} skipped, {listing.excluded} excluded")


@dataclass
class StopReport:
    """What a backup run has done so far, for the summary of a run that is stopped."""

    tally: BackupTally
    listing: object  # the FileListing: its totals grow while the walk goes on
    destination: str
    dry_run: bool
    started: float  # time.monotonic() at the run's start
    shown: ProgressArtifact

    def summary(self) -> BackupSummary:
        s = self.tally.summary(self.listing, root=self.listing.root, destination=self.destination,
                               dry_run=self.dry_run, duration_seconds=time.monotonic() - self.started)
        # The totals the walk found, not only those of the batches that finished.
        s.files_total = max(s.files_total, self.listing.files)
        s.bytes_total = max(s.bytes_total, self.listing.bytes)
        return s


_stop_reports: ContextVar[list | None] = ContextVar("stop_reports", default=None)


def report_on_stop(report: StopReport) -> None:
    """Name what the flow's @ends_cancelled_when_stopped reports if the run is stopped from here on."""
    reports = _stop_reports.get()
    if reports is not None:
        reports.append(report)


def ends_cancelled_when_stopped(fn):
    """For the backup flow, outside @stops_on_termination: a run that is stopped (a cancel
    from the UI or the API, SIGTERM, Ctrl-C) ends Cancelled, with one WARNING line saying
    how far it got, a `cancelled` summary and a progress artifact that says it stopped, not
    with Prefect's crash report. Finished batches are checkpointed already, so a new run or
    a Retry resumes from them."""

    # The wrapper refers to module functions only: Dask pickles the flow with its context,
    # and a ContextVar (or the stop Event) it referred to directly cannot be pickled.
    @functools.wraps(fn)
    def flow_body(*args, **kwargs):
        return _ending_cancelled_when_stopped(fn, args, kwargs)

    return flow_body


def _ending_cancelled_when_stopped(fn, args, kwargs):
    token = _stop_reports.set([])
    try:
        return fn(*args, **kwargs)
    except BaseException:
        if not STOP.is_set():
            raise
        reports = _stop_reports.get() or []
        return _cancelled(reports[-1] if reports else None, kwargs.get("root_directory", args[0] if args else ""))
    finally:
        _stop_reports.reset(token)


def _cancelled(report: StopReport | None, root: str):
    if report is not None:
        summary = report.summary()
        report.shown.stopped()
    else:  # stopped before the walk and the destination were ready
        summary = BackupSummary(root=str(root))
    summary.outcome, summary.error = "cancelled", f"{stop_reason()}: finished batches are checkpointed, run again " \
                                                  f"or Retry to resume"
    publish_summary(summary, counting=report is not None and report.listing.walking)
    return Cancelled(data=RunFailed(summary), message=summary.error)


def publish_summary(summary: BackupSummary, counting: bool = False) -> None:
    """The summary as a markdown artifact on the flow run, and the files that were skipped
    or failed as a table artifact when there are any; its outcome as one log line (a
    WARNING for a run that was cancelled: `counting`, its walk had not ended)."""
    from prefect import get_run_logger

    verb = "would upload" if summary.dry_run else "uploaded"
    if summary.outcome == "cancelled":
        total = f"{summary.files_total}+ files" if counting else count(summary.files_total, "file")
        get_run_logger().warning("Backup cancelled: %d of %s stored; run again or Retry to resume",
                                 summary.files_uploaded + summary.files_unchanged, total)
    else:
        get_run_logger().info(
            "Backup %s: %s, %d %s (%s), %d unchanged, %d skipped, %d failed in %.1f s%s%s",
            summary.outcome, count(summary.files_total, "file"), summary.files_uploaded, verb,
            human_bytes(summary.bytes_uploaded),
            summary.files_unchanged, summary.files_skipped, summary.files_failed, summary.duration_seconds,
            # Why the run was as fast as it was: how many files it settled at copying at once.
            f", {summary.files_in_flight} files in flight at the end ({summary.files_in_flight_peak} at most)"
            if summary.files_in_flight else "",
            f": {summary.error}" if summary.error else "")
    create_markdown_artifact(
        markdown=summary.to_markdown(),
        key="backup-summary",
        description=f"Backup {summary.outcome}: {count(summary.files_uploaded, 'file')} {verb}, "
                    f"{summary.files_failed} failed",
    )
    _problem_table("backup-problems", "Files not backed up, with the reason",
                   (("failed", summary.failed), ("skipped", summary.skipped)))


def publish_sharded_summary(summary) -> None:
    """A sharded backup's summary as a markdown artifact, and its shards as a table
    artifact (shard, flow run, state, attempts, where it ran, files, bytes)."""
    publish_summary(summary)
    create_table_artifact(table=summary.table_rows(), key="backup-shards",
                          description=f"{count(len(summary.shards), 'shard')}: which run backed up which part")


def _problem_table(key: str, description: str, kinds, limit: int = 1000) -> None:
    rows = [{"kind": kind, "path": p.path, "reason": p.reason} for kind, problems in kinds for p in problems]
    if rows:
        create_table_artifact(table=rows[:limit], key=key, description=description)


def announce_sharded(root: str, shards: int, shard_by: str, destination, task_runner: str) -> None:
    """One log line saying what this sharded backup will do."""
    from prefect import get_run_logger

    where = "on a Dask cluster" if task_runner == "dask" else "as runs of the shard deployment"
    get_run_logger().info("Backing up %s to %s as %s (by %s), %s", root, destination.describe(),
                          count(shards, "shard"), shard_by, where)


def announce_verify(listing, destination) -> None:
    """One log line saying what this verify run compares."""
    from prefect import get_run_logger

    get_run_logger().info("Verifying %s (%s, %s) against %s", listing.root, count(listing.files, "file"),
                          human_bytes(listing.bytes), destination.describe())


def publish_verify_summary(summary: VerifySummary) -> None:
    """The verify summary as markdown, and its differences as a table; its outcome as one log line."""
    from prefect import get_run_logger

    get_run_logger().info(
        "Verify result: %s, %s: %d match, %d missing, %d different, %d unreadable, %d extra blobs in %.1f s%s",
        summary.outcome, count(summary.files_total, "file"), summary.files_matching, summary.files_missing,
        summary.files_different, summary.files_unreadable, summary.blobs_extra, summary.duration_seconds,
        f": {summary.error}" if summary.error else "")
    create_markdown_artifact(
        markdown=summary.to_markdown(),
        key="verify-summary",
        description=f"Verify {summary.outcome}: {summary.files_missing} missing, {summary.files_different} different",
    )
    rows = summary.table_rows()
    if rows:
        create_table_artifact(table=rows, key="verify-differences", description="Files that differ from the backup")


def announce_restore(plan, destination, target: str) -> None:
    """One log line saying what this restore brings back, from where, into where."""
    from prefect import get_run_logger

    get_run_logger().info("Restoring %s from %s (%s, %s) into %s", plan.run or "the current blobs",
                          destination.describe(), count(plan.files, "file"), human_bytes(plan.bytes), target)


def publish_restore_summary(summary: RestoreSummary) -> None:
    """The restore summary as a markdown artifact on the flow run; its outcome as one log line."""
    from prefect import get_run_logger

    get_run_logger().info(
        "Restore %s of %s: %s, %d restored (%s), %d unchanged, %d refused, %d failed in %.1f s%s",
        summary.outcome, summary.restored_from or "the current blobs", count(summary.files_total, "file"),
        summary.files_restored, human_bytes(summary.bytes_restored), summary.files_unchanged, summary.files_refused,
        summary.files_failed, summary.duration_seconds, f": {summary.error}" if summary.error else "")
    create_markdown_artifact(
        markdown=summary.to_markdown(),
        key="restore-summary",
        description=f"Restore {summary.outcome} of {summary.restored_from or 'the current blobs'}: "
                    f"{summary.files_restored} restored, {summary.files_failed} failed",
    )
    _problem_table("restore-problems", "Blobs not restored, with the reason",
                   (("failed", summary.failed), ("refused", summary.refused)))


def announce_prune(destination, keep: dict[str, int], dry_run: bool) -> None:
    """One log line saying what this prune will do; `keep` maps each rule (last, daily...) to its N."""
    from prefect import get_run_logger

    policy = ", ".join(f"--keep-{name} {n}" for name, n in keep.items() if n)
    get_run_logger().info("%s %s: keep %s", "Dry run of pruning" if dry_run else "Pruning", destination.describe(),
                          policy or "every run (no --keep rule given)")


def publish_prune_summary(summary: PruneSummary) -> None:
    """The prune summary (kept and deleted runs, bytes freed) as a markdown artifact; its
    outcome as one log line."""
    from prefect import get_run_logger

    verb = "would delete" if summary.dry_run else "deleted"
    get_run_logger().info(
        "Prune %s%s: kept %s, %s %s and %s (%s %s) in %.1f s", summary.outcome,
        " (dry run)" if summary.dry_run else "", count(summary.runs_kept, "run"), verb,
        count(summary.manifests_deleted, "run"), count(summary.snapshots_deleted, "snapshot"),
        human_bytes(summary.bytes_freed), "would be freed" if summary.dry_run else "freed", summary.duration_seconds)
    create_markdown_artifact(
        markdown=summary.to_markdown(),
        key="prune-summary",
        description=f"Prune {summary.outcome}: {summary.runs_kept} kept, {summary.manifests_deleted} {verb}, "
                    f"{human_bytes(summary.bytes_freed)} freed" + (" (dry run)" if summary.dry_run else ""),
    )
