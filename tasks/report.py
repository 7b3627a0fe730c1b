"""Show a run's progress and summary in the Prefect UI (artifacts)."""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from site_backup.summary import BackupSummary, VerifySummary


def start_progress(description: str) -> UUID:
    """A progress artifact at 0 %, updated as batches finish."""
    return create_progress_artifact(progress=0.0, key="backup-progress", description=description)


def update_progress(artifact_id: UUID, done: int, total: int) -> None:
    update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / total if total else 100.0)


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
