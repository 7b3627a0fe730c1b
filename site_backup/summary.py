"""The one summary of a backup run: the flow's result, the text block, the JSON, the artifact."""

from __future__ import annotations

from typing import Iterable

from pydantic import BaseModel, Field

from .copy import BatchResult
from .files import FileListing, display_path
from .units import MiB, count, human_bytes

EXIT_OK, EXIT_INCOMPLETE, EXIT_BAD_INPUT = 0, 1, 2


class FileProblem(BaseModel):
    path: str
    reason: str


class BackupSummary(BaseModel):
    """What a run did. `outcome` is "completed" when every file is backed up (or was
    skipped by rule, such as a link), "incomplete" when some files failed, "failed" when the
    run could not go on (the root vanished, storage stopped answering; `error` says why);
    both exit with code 1. "cancelled": the run was stopped (a cancel, SIGTERM, Ctrl-C)."""

    outcome: str = "completed"
    error: str = ""
    dry_run: bool = False
    root: str = ""
    destination: str = ""
    shard: str = ""  # "K/N" for one shard of a sharded backup
    files_total: int = 0
    files_uploaded: int = 0
    files_unchanged: int = 0
    files_changed: int = 0  # uploaded over an earlier blob whose content was kept (snapshot or version)
    files_skipped: int = 0
    files_failed: int = 0
    files_excluded: int = 0
    bytes_total: int = 0
    bytes_uploaded: int = 0
    retries: int = 0
    batches: int = 0
    batches_from_checkpoint: int = 0
    duration_seconds: float = 0.0
    copy_seconds: float = 0.0  # from the first copy task submitted to the last one finished
    # Files copied at once: the adaptive level at the end (0: nothing was copied) and its highest.
    files_in_flight: int = 0
    files_in_flight_peak: int = 0
    skipped: list[FileProblem] = Field(default_factory=list)
    failed: list[FileProblem] = Field(default_factory=list)
    # --delete-missing: blobs of files no longer in the tree, deleted after their content
    # was kept (in a dry run: that would be); why nothing was deleted, when so.
    delete_missing: bool = False
    files_deleted: int = 0
    bytes_deleted: int = 0
    deleted: list[FileProblem] = Field(default_factory=list)
    deletion_blocked: str = ""
    # Nothing deleted because the walk found no file, or more would go than --max-delete
    # allows: the run fails with exit code 2 and names what to pass.
    deletion_refused: bool = False
    # Blobs another writer changed (or deleted) after this run listed them: not deleted by it.
    files_changed_meanwhile: int = 0
    changed_meanwhile: list[FileProblem] = Field(default_factory=list)
    # A shard of a sharded run: its part of the run's manifest, staged (block ids, files,
    # bytes), which the sharded run commits with the other shards'.
    manifest_part: dict | None = None

    @property
    def exit_code(self) -> int:
        if self.deletion_refused:
            return EXIT_BAD_INPUT
        return EXIT_INCOMPLETE if self.files_failed or self.outcome == "failed" else EXIT_OK

    def to_text(self) -> str:
        """Aligned text for a terminal or a log."""
        return render(self.rows(), self.sections())

    def to_markdown(self) -> str:
        """The summary as a Prefect markdown artifact: a table, then the problems."""
        return render_markdown(f"Backup {self.outcome}" + (" (dry run)" if self.dry_run else ""), self.rows(),
                               self.sections())

    def sections(self):
        deleted = (("Would delete" if self.dry_run else "Deleted", self.deleted),
                   ("Changed meanwhile, not deleted", self.changed_meanwhile)) if self.delete_missing else ()
        return (("Skipped", self.skipped), ("Failed", self.failed), *deleted)

    def with_deletions(self, result) -> "BackupSummary":
        """This summary with a mirror.MirrorResult: the deleted files, and the blobs that
        could not be deleted as failed files (no file of the tree, so not in files_total)."""
        how = "would be deleted" if self.dry_run else "deleted; its content is kept in history"
        deleted = [FileProblem(path=p, reason=f"no longer in the tree: {how}") for p in result.deleted]
        failed = sorted(self.failed + file_problems(result.failed), key=by_path)
        outcome = self.outcome if self.outcome == "failed" or not failed else "incomplete"
        error = self.error
        if result.refused and self.outcome != "failed":  # the refused run is no restore point: it fails
            outcome, error = "failed", f"--delete-missing deleted nothing: {result.refused}"
        changed = file_problems(result.changed)
        return self.model_copy(update=dict(
            delete_missing=True, files_deleted=len(deleted), bytes_deleted=result.bytes_deleted, deleted=deleted,
            deletion_blocked=result.blocked or result.refused, deletion_refused=bool(result.refused),
            files_changed_meanwhile=len(changed), changed_meanwhile=changed, failed=failed, files_failed=len(failed),
            outcome=outcome, error=error))

    def rows(self) -> list[tuple[str, str]]:
        verb = "would upload" if self.dry_run else "uploaded"
        secs = max(self.duration_seconds, 1e-9)
        rows = [
            ("Source", self.root + (f" (shard {self.shard})" if self.shard else "")),
            ("Destination", self.destination),
            ("Files", f"{self.files_total} total, {self.files_uploaded} {verb}, {self.files_unchanged} unchanged, "
                      f"{self.files_skipped} skipped, {self.files_failed} failed, {self.files_excluded} excluded"),
            ("Changed", f"{self.files_changed} (uploaded over an earlier blob; its content was kept first)"),
            ("Bytes", f"{human_bytes(self.bytes_total)} total, {human_bytes(self.bytes_uploaded)} {verb}"),
            *([("Deleted", self._deleted_row())] if self.delete_missing else []),
            ("Batches", f"{self.batches} ({self.batches_from_checkpoint} done by an earlier run)"),
            ("Retries", str(self.retries)),
            *([("In flight", f"{self.files_in_flight} files at the end, {self.files_in_flight_peak} at most "
                             "(adapts to storage)")]
              if self.files_in_flight else []),
            ("Duration", f"{self.duration_seconds:.1f} s ({self.files_total / secs:.0f} files/s, "
                         f"{self.bytes_uploaded / MiB / secs:.1f} MiB/s {verb})"),
            ("Outcome", self.outcome + (" (dry run: nothing was uploaded)" if self.dry_run else "")),
        ]
        if self.error:
            rows.append(("Error", self.error))
        return rows


    def _deleted_row(self) -> str:
        if self.deletion_refused:
            return "nothing, refused: see Error"
        if self.deletion_blocked:
            return f"nothing: {self.deletion_blocked}"
        verb = "would be deleted" if self.dry_run else "deleted (their content is kept in history)"
        changed = (f"; {count(self.files_changed_meanwhile, 'file')} changed by another writer meanwhile, "
                   "not deleted" if self.files_changed_meanwhile else "")
        return (f"{count(self.files_deleted, 'file')} no longer in the tree, {human_bytes(self.bytes_deleted)}, "
                f"{verb}{changed}")


def render(rows: list[tuple[str, str]], sections) -> str:
    """Aligned `Label:  value` lines, then each non-empty list of problems as a table."""
    width = max(len(label) for label, _ in rows)
    lines = [f"{label + ':':<{width + 1}}  {value}" for label, value in rows]
    for title, problems in sections:
        if problems:
            lines.append(f"{title} ({len(problems)}):")
            pad = min(max(len(p.path) for p in problems), 60)
            lines.extend(f"  {p.path:<{pad}}  {p.reason}" for p in problems)
    return "\n".join(lines)


def render_markdown(title: str, rows: list[tuple[str, str]], sections, limit: int = 100) -> str:
    """A markdown artifact: the rows as a two-column table, then each non-empty list of
    problems as a table (the first `limit`; the full lists are in the run's result)."""
    lines = [f"# {title}", "", "| | |", "| --- | --- |"]
    lines += [f"| **{label}** | {_cell(value)} |" for label, value in rows]
    for title_, problems in sections:
        if problems:
            lines += ["", f"## {title_} ({len(problems)})", "", "| path | reason |", "| --- | --- |"]
            lines += [f"| `{_cell(p.path)}` | {_cell(p.reason)} |" for p in problems[:limit]]
            if len(problems) > limit:
                lines.append(f"| ... | and {len(problems) - limit} more: see the run's result or --json |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("`", "'")


class BackupTally:
    """The running totals of a backup's batch results, added as each batch finishes: the
    summary needs counts and problems only, so no batch's files are kept."""

    def __init__(self) -> None:
        self.totals = BackupSummary()
        self.skipped: list[FileProblem] = []
        self.failed: list[FileProblem] = []
        self.run_error = ""  # the first batch's reason why the run could not go on

    def add(self, result: BatchResult, from_checkpoint: bool, batches: int = 1) -> None:
        """Count one finished batch (from a checkpoint: reused, nothing sent), or the
        `batches` that one task copied together."""
        s = self.totals
        if from_checkpoint:
            result = result.as_cached()
        self.run_error = self.run_error or result.run_error
        s.batches += batches
        s.batches_from_checkpoint += from_checkpoint * batches
        s.files_uploaded += result.files_uploaded
        s.files_unchanged += result.files_unchanged
        s.files_changed += getattr(result, "files_changed", 0)  # checkpoints from before it was counted
        s.bytes_total += result.bytes_total
        s.bytes_uploaded += result.bytes_uploaded
        s.retries += result.retries
        if result.in_flight:  # 0 for a batch from a checkpoint (as_cached): nothing was sent
            s.files_in_flight = result.in_flight
            s.files_in_flight_peak = max(s.files_in_flight_peak, result.in_flight_peak)
        self.skipped += file_problems(result.skipped)
        self.failed += file_problems(result.failed)

    def summary(self, listing: FileListing, *, root: str, destination: str, dry_run: bool, duration_seconds: float,
                copy_seconds: float = 0.0) -> BackupSummary:
        """The summary of the batches added so far and of what the listing left out."""
        s = self.totals.model_copy(update=dict(
            root=root, destination=destination, dry_run=dry_run, duration_seconds=round(duration_seconds, 3),
            copy_seconds=round(copy_seconds, 3), files_excluded=listing.excluded))
        skipped = file_problems(listing.skipped) + self.skipped
        failed = file_problems(listing.failed) + self.failed
        s.skipped, s.failed = sorted(skipped, key=by_path), sorted(failed, key=by_path)
        s.files_skipped, s.files_failed = len(skipped), len(failed)
        s.files_total = s.files_uploaded + s.files_unchanged + s.files_skipped + s.files_failed
        s.outcome = "incomplete" if s.files_failed else "completed"
        if self.run_error:
            s.outcome, s.error = "failed", self.run_error
        return s


class RunFailed(Exception):
    """A run that could not go on; carries its summary, so what was done is still reported."""

    def __init__(self, summary):
        super().__init__(summary)  # the only arg, so it pickles with the run's state
        self.summary = summary

    def __str__(self) -> str:
        return self.summary.error


def by_path(p: FileProblem) -> str:
    return p.path


def file_problems(problems) -> list[FileProblem]:
    """The summary's form of (path, reason) pairs from a listing or a batch result; paths
    printable (a restored name that is not UTF-8 shows its bytes as \\xNN)."""
    return [FileProblem(path=display_path(p.path), reason=p.reason) for p in problems]
