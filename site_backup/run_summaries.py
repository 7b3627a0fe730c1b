"""The summaries of verify, restore and prune runs (a backup's is in summary.py): each the
flow's result, the text block, the JSON and the artifact."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .files import FileListing, display_path
from .summary import EXIT_INCOMPLETE, EXIT_OK, FileProblem, by_path, file_problems, render, render_markdown
from .units import MiB, count, human_bytes


class VerifySummary(BaseModel):
    """What a verify run found. `outcome` is "verified" when every file has a blob of the
    same size and MD5, "differences" otherwise (exit code 1). Extra blobs (files deleted
    from the tree since, or excluded) are listed but are not a difference: backups never
    delete."""

    outcome: str = "verified"
    error: str = ""  # outcome "failed": why the verify could not finish (storage stopped answering)
    root: str = ""
    destination: str = ""
    files_total: int = 0
    files_matching: int = 0
    files_missing: int = 0
    files_different: int = 0
    files_unreadable: int = 0
    blobs_extra: int = 0
    bytes_checked: int = 0
    duration_seconds: float = 0.0
    missing: list[FileProblem] = Field(default_factory=list)
    different: list[FileProblem] = Field(default_factory=list)
    unreadable: list[FileProblem] = Field(default_factory=list)
    extra: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.outcome == "verified" else EXIT_INCOMPLETE

    def to_text(self) -> str:
        lines = [render(self.rows(), self.sections())]
        if self.extra:
            lines.append(f"Extra ({len(self.extra)}):")
            lines.extend(f"  {name}" for name in self.extra[:50])
            if len(self.extra) > 50:
                lines.append(f"  ... and {len(self.extra) - 50} more (see --json)")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The summary as a markdown table; the differences are a table artifact of their own."""
        return render_markdown(f"Verify: {self.outcome}", self.rows(), ())

    def sections(self):
        return (("Missing", self.missing), ("Different", self.different), ("Unreadable", self.unreadable))

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("Source", self.root),
            ("Destination", self.destination),
            ("Files", f"{self.files_total} total, {self.files_matching} matching, {self.files_missing} missing, "
                      f"{self.files_different} different, {self.files_unreadable} unreadable"),
            ("Extra blobs", f"{self.blobs_extra} (no file in the tree: deleted or excluded since)"),
            ("Checked", f"{human_bytes(self.bytes_checked)} in {self.duration_seconds:.1f} s"),
            ("Outcome", self.outcome),
        ]
        return rows + ([("Error", self.error)] if self.error else [])

    def table_rows(self, limit: int = 1000) -> list[dict[str, str]]:
        """Rows for a Prefect table artifact: one per difference."""
        rows = [{"kind": kind, "path": p.path, "reason": p.reason}
                for kind, problems in (("missing", self.missing), ("different", self.different),
                                       ("unreadable", self.unreadable))
                for p in problems]
        rows += [{"kind": "extra blob", "path": name, "reason": "no file in the tree"} for name in self.extra]
        return rows[:limit]


def summarize_verify(listing: FileListing, results, extra: list[str], *, root: str, destination: str,
                     duration_seconds: float) -> VerifySummary:
    """Reduce the verify results of every batch into one summary."""
    s = VerifySummary(root=root, destination=destination, duration_seconds=round(duration_seconds, 3), extra=extra)
    unreadable = file_problems(listing.failed)
    for r in results:
        s.files_matching += r.matching
        s.bytes_checked += r.bytes_checked
        s.missing += file_problems(r.missing)
        s.different += file_problems(r.different)
        unreadable += file_problems(r.unreadable)
    s.unreadable = unreadable
    s.missing.sort(key=by_path)
    s.different.sort(key=by_path)
    s.files_missing, s.files_different, s.files_unreadable = len(s.missing), len(s.different), len(s.unreadable)
    s.blobs_extra = len(extra)
    s.files_total = s.files_matching + s.files_missing + s.files_different + s.files_unreadable
    s.outcome = "differences" if (s.files_missing or s.files_different or s.files_unreadable) else "verified"
    return s


class RestoreSummary(BaseModel):
    """What a restore did. `outcome` is "completed" when every blob was restored or was
    already there, "incomplete" when some failed or were refused (exit code 1)."""

    outcome: str = "completed"
    error: str = ""  # outcome "failed": why the restore could not go on (storage stopped answering, stopped)
    source: str = ""
    target: str = ""
    restored_from: str = ""  # the backup run restored; empty: the current blobs
    files_total: int = 0
    files_restored: int = 0
    files_unchanged: int = 0
    files_refused: int = 0
    files_failed: int = 0
    bytes_total: int = 0
    bytes_restored: int = 0
    batches: int = 0
    batches_from_checkpoint: int = 0
    duration_seconds: float = 0.0
    unverified: list[str] = Field(default_factory=list)
    refused: list[FileProblem] = Field(default_factory=list)
    failed: list[FileProblem] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.outcome == "completed" else EXIT_INCOMPLETE

    def to_text(self) -> str:
        return render(self.rows(), self.sections())

    def to_markdown(self) -> str:
        return render_markdown(f"Restore {self.outcome}", self.rows(), self.sections())

    def sections(self):
        return (("Refused", self.refused), ("Failed", self.failed))

    def rows(self) -> list[tuple[str, str]]:
        secs = max(self.duration_seconds, 1e-9)
        rows = [
            ("Source", self.source),
            ("Restored", self.restored_from or "the current blobs"),
            ("Target", self.target),
            ("Files", f"{self.files_total} total, {self.files_restored} restored, {self.files_unchanged} unchanged, "
                      f"{self.files_refused} refused, {self.files_failed} failed"),
            ("Bytes", f"{human_bytes(self.bytes_total)} total, {human_bytes(self.bytes_restored)} restored"),
            ("Unverified", f"{len(self.unverified)} (blobs without a Content-MD5)"),
            ("Batches", f"{self.batches} ({self.batches_from_checkpoint} done by an earlier run)"),
            ("Duration", f"{self.duration_seconds:.1f} s ({self.bytes_restored / MiB / secs:.1f} MiB/s)"),
            ("Outcome", self.outcome),
        ]
        return rows + ([("Error", self.error)] if self.error else [])


def summarize_restore(refused, results, *, source: str, target: str, duration_seconds: float) -> RestoreSummary:
    """Reduce the refused names and each batch's (result, came from a checkpoint)."""
    s = RestoreSummary(source=source, target=target, duration_seconds=round(duration_seconds, 3))
    s.refused = sorted(file_problems(refused), key=by_path)
    for result, from_checkpoint in results:
        if from_checkpoint:
            result = result.as_cached()
        s.error = s.error or result.run_error
        s.batches += 1
        s.batches_from_checkpoint += from_checkpoint
        s.files_restored += result.files_restored
        s.files_unchanged += result.files_unchanged
        s.bytes_total += result.bytes_total
        s.bytes_restored += result.bytes_restored
        s.unverified += map(display_path, result.unverified)
        s.failed += file_problems(result.failed)
    s.failed.sort(key=by_path)
    s.files_refused, s.files_failed = len(s.refused), len(s.failed)
    s.files_total = s.files_restored + s.files_unchanged + s.files_refused + s.files_failed
    s.outcome = "failed" if s.error else "incomplete" if (s.files_refused or s.files_failed) else "completed"
    return s


class PruneSummary(BaseModel):
    """What a prune did (or, with dry_run, would do)."""

    outcome: str = "completed"
    dry_run: bool = False
    destination: str = ""
    policy: str = ""
    runs_total: int = 0
    runs_kept: int = 0
    manifests_deleted: int = 0
    snapshots_kept: int = 0
    snapshots_deleted: int = 0
    bytes_freed: int = 0
    stale_locks_removed: int = 0
    duration_seconds: float = 0.0
    kept: list[str] = Field(default_factory=list)  # "finished  run id  files  outcome"
    deleted: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_OK

    def to_text(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        rows = [
            ("Destination", self.destination),
            ("Policy", self.policy),
            ("Runs", f"{self.runs_total} total, {self.runs_kept} kept, {count(self.manifests_deleted, 'manifest')} "
                     f"{verb}"),
            ("Snapshots", f"{self.snapshots_kept} still needed, {self.snapshots_deleted} {verb}"),
            ("Freed", human_bytes(self.bytes_freed) + (" (dry run: nothing was deleted)" if self.dry_run else "")),
            ("Duration", f"{self.duration_seconds:.1f} s"),
        ]
        lines = [render(rows, ())]
        for title, runs in (("Kept", self.kept), ("Deleted" if not self.dry_run else "Would delete", self.deleted)):
            if runs:
                lines.append(f"{title} ({len(runs)}):")
                lines.extend(f"  {r}" for r in runs)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        return f"# Prune {self.outcome}\n\n```\n{self.to_text()}\n```\n"
