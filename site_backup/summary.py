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
        failed = sorted(self.failed + _problems(result.failed), key=_path)
        outcome = self.outcome if self.outcome == "failed" or not failed else "incomplete"
        error = self.error
        if result.refused and self.outcome != "failed":  # the refused run is no restore point: it fails
            outcome, error = "failed", f"--delete-missing deleted nothing: {result.refused}"
        changed = _problems(result.changed)
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
        self.skipped += _problems(result.skipped)
        self.failed += _problems(result.failed)

    def summary(self, listing: FileListing, *, root: str, destination: str, dry_run: bool, duration_seconds: float,
                copy_seconds: float = 0.0) -> BackupSummary:
        """The summary of the batches added so far and of what the listing left out."""
        s = self.totals.model_copy(update=dict(
            root=root, destination=destination, dry_run=dry_run, duration_seconds=round(duration_seconds, 3),
            copy_seconds=round(copy_seconds, 3), files_excluded=listing.excluded))
        skipped = _problems(listing.skipped) + self.skipped
        failed = _problems(listing.failed) + self.failed
        s.skipped, s.failed = sorted(skipped, key=_path), sorted(failed, key=_path)
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


def _path(p: FileProblem) -> str:
    return p.path


def _problems(problems) -> list[FileProblem]:
    """The summary's form of (path, reason) pairs from a listing or a batch result; paths
    printable (a restored name that is not UTF-8 shows its bytes as \\xNN)."""
    return [FileProblem(path=display_path(p.path), reason=p.reason) for p in problems]


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
    unreadable = _problems(listing.failed)
    for r in results:
        s.files_matching += r.matching
        s.bytes_checked += r.bytes_checked
        s.missing += _problems(r.missing)
        s.different += _problems(r.different)
        unreadable += _problems(r.unreadable)
    s.unreadable = unreadable
    s.missing.sort(key=_path)
    s.different.sort(key=_path)
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
    s.refused = sorted(_problems(refused), key=_path)
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
        s.failed += _problems(result.failed)
    s.failed.sort(key=_path)
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
