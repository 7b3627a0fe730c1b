"""Show a run's progress and summary in the Prefect UI (artifacts)."""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from site_backup.summary import BackupSummary, RestoreSummary, VerifySummary

PROGRESS_FORMAT = "{files_done}/{files_total} files, {bytes_done}/{bytes_total} bytes"


def start_progress(files_total: int, bytes_total: int) -> UUID:
    """A progress artifact at 0 %, updated as batches finish."""
    description = PROGRESS_FORMAT.format(files_done=0, files_total=files_total, bytes_done=0, bytes_total=bytes_total)
    return create_progress_artifact(progress=0.0, key="backup-progress", description=description)


def update_progress(artifact_id: UUID, files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> None:
    """Move the progress artifact; its description carries the counts (the HTTP status API
    reads them back as the run's customStatus)."""
    done, total = (bytes_done, bytes_total) if bytes_total else (files_done, files_total)
    update_progress_artifact(
        artifact_id=artifact_id,
        progress=100.0 * done / total if total else 100.0,
        description=PROGRESS_FORMAT.format(files_done=files_done, files_total=files_total,
                                           bytes_done=bytes_done, bytes_total=bytes_total),
    )


def publish_summary(summary: BackupSummary) -> None:
    """The summary as a markdown artifact on the flow run."""
    create_markdown_artifact(
        markdown=summary.to_markdown(),
        key="backup-summary",
        description=f"Backup {summary.outcome}: {summary.files_uploaded} files uploaded, {summary.files_failed} failed",
    )


def publish_verify_summary(summary: VerifySummary) -> None:
    """The verify summary as markdown, and its differences as a table."""
    create_markdown_artifact(
        markdown=f"# Verify: {summary.outcome}\n\n```\n{summary.to_text()}\n```\n",
        key="verify-summary",
        description=f"Verify {summary.outcome}: {summary.files_missing} missing, {summary.files_different} different",
    )
    rows = summary.table_rows()
    if rows:
        create_table_artifact(table=rows, key="verify-differences", description="Files that differ from the backup")


def publish_restore_summary(summary: RestoreSummary) -> None:
    """The restore summary as a markdown artifact on the flow run."""
    create_markdown_artifact(
        markdown=summary.to_markdown(),
        key="restore-summary",
        description=f"Restore {summary.outcome}: {summary.files_restored} restored, {summary.files_failed} failed",
    )
