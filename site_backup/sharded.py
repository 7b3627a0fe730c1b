"""One backup spread over shards: what each shard's run did, and the one summary of them all."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .shards import Shard
from .summary import EXIT_INCOMPLETE, EXIT_OK, BackupSummary, _cell, human_bytes, render, render_markdown

# The counters a shard's summary adds to the whole.
_SUMS = ("files_total", "files_uploaded", "files_unchanged", "files_changed", "files_skipped", "files_failed",
         "files_excluded", "bytes_total", "bytes_uploaded", "retries", "batches", "batches_from_checkpoint",
         "files_in_flight", "files_in_flight_peak")  # the shards copy side by side: their levels add up


class ShardRow(BaseModel):
    """One shard: which run backed it up, where, how it ended."""

    shard: str  # "K/N"
    flow_run_id: str = ""
    flow_run_name: str = ""
    state: str = ""  # the final state's name: Completed, Incomplete, Failed, Crashed, ...
    attempts: int = 0  # runs started for this shard by this parent run
    ran_on: str = ""  # host:pid of the process that ran it
    outcome: str = ""  # the shard summary's outcome; "failed" when there is none
    files_total: int = 0
    files_uploaded: int = 0
    files_failed: int = 0
    bytes_uploaded: int = 0
    error: str = ""


class ShardedSummary(BackupSummary):
    """The summary of a sharded backup: the shards' summaries added up, and one row per shard."""

    shards: list[ShardRow] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.outcome == "completed" else EXIT_INCOMPLETE

    def to_text(self) -> str:
        return render(self.rows(), self.sections()) + "\n" + self.shard_table()

    def to_markdown(self) -> str:
        """The summary as a Prefect markdown artifact: the totals, the problems, then the shards."""
        lines = [f"## Shards ({len(self.shards)})", "",
                 "| shard | flow run | state | attempts | ran on | files | uploaded | failed | bytes uploaded |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r.shard} | {_cell(r.flow_run_name or r.flow_run_id)} | {_cell(r.state)} | {r.attempts} | "
                  f"{_cell(r.ran_on)} | {r.files_total} | {r.files_uploaded} | {r.files_failed} | "
                  f"{human_bytes(r.bytes_uploaded)} |" for r in self.shards]
        title = f"Sharded backup {self.outcome}" + (" (dry run)" if self.dry_run else "")
        return render_markdown(title, self.rows(), self.sections()) + "\n" + "\n".join(lines) + "\n"

    def shard_table(self) -> str:
        """One aligned line per shard."""
        lines = [f"Shards ({len(self.shards)}):"]
        for r in self.shards:
            lines.append(f"  {r.shard:>7}  {r.state:<10}  {r.files_total:>8} files  {r.files_uploaded:>8} uploaded  "
                         f"{r.files_failed:>6} failed  {human_bytes(r.bytes_uploaded):>10}  attempts {r.attempts}  "
                         f"{r.flow_run_name or r.flow_run_id}  {r.ran_on}" + (f"  {r.error}" if r.error else ""))
        return "\n".join(lines)

    def table_rows(self) -> list[dict]:
        """Rows for the Prefect table artifact of the shards."""
        return [r.model_dump() for r in self.shards]


def shard_row(shard: Shard, summary: BackupSummary | None, *, flow_run_id: str = "", flow_run_name: str = "",
              state: str = "", attempts: int = 0, ran_on: str = "", error: str = "") -> ShardRow:
    """The row of one shard from its run and its summary (None when the run left none)."""
    row = ShardRow(shard=str(shard), flow_run_id=flow_run_id, flow_run_name=flow_run_name, state=state,
                   attempts=attempts, ran_on=ran_on, error=error)
    if summary is None:
        row.outcome = "failed"
        return row
    row.outcome = summary.outcome
    row.error = error or summary.error
    row.files_total, row.files_uploaded = summary.files_total, summary.files_uploaded
    row.files_failed, row.bytes_uploaded = summary.files_failed, summary.bytes_uploaded
    return row


def combine(shards: list[tuple[ShardRow, BackupSummary | None]], *, root: str, destination: str, dry_run: bool,
            duration_seconds: float) -> ShardedSummary:
    """Add the shards' summaries up into one. The outcome is "failed" when a shard failed
    (or left no summary), else "incomplete" when a shard had failed files, else "completed";
    `error` names the shards that failed."""
    s = ShardedSummary(root=root, destination=destination, dry_run=dry_run,
                       duration_seconds=round(duration_seconds, 3), shards=[row for row, _ in shards])
    errors = []
    for row, summary in shards:
        if summary is None or summary.outcome == "failed":
            errors.append(f"shard {row.shard}: {row.error or 'failed'}")
        if summary is None:
            continue
        for name in _SUMS:
            setattr(s, name, getattr(s, name) + getattr(summary, name))
        s.copy_seconds = max(s.copy_seconds, summary.copy_seconds)
        s.skipped += summary.skipped
        s.failed += summary.failed
    s.skipped.sort(key=lambda p: p.path)
    s.failed.sort(key=lambda p: p.path)
    s.outcome = "failed" if errors else "incomplete" if s.files_failed else "completed"
    s.error = "; ".join(errors)
    return s
