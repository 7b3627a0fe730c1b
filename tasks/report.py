"""Show a run's progress and summary in the Prefect UI (artifacts)."""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from site_backup.summary import BackupSummary


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
