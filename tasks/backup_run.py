"""The named steps of a backup run (flows/backup_site_content.py): its input checked, the
batches in copy order, the fan-in of finished batches, the mirror pass and the end state."""

from __future__ import annotations

import time
from dataclasses import replace
from itertools import chain
from typing import Iterator

from prefect.utilities.annotations import quote

from site_backup.destination import Destination
from site_backup.batch_order import DRY_RUN_BATCHES_PER_TASK, heaviest_first_within, joined
from site_backup.files import Batch, FileListing
from site_backup.mirror import DeleteLimit, blocker
from site_backup.progress import progress
from site_backup.retry import RetryPolicy
from site_backup.run_history import RunHistory
from site_backup.shards import Shard, check_mirror
from site_backup.summary import BackupSummary, BackupTally
from site_backup.tiers import check_access_tier
from tasks.copy_batch import copy_slots
from tasks.history import delete_missing_files
from tasks.report import ProgressArtifact, announce_listed, backup_state, failed_state, publish_summary


def checked_input(container: str, prefix: str, credentials_block: str | None, retries: int, storage_timeout: float,
                  shard: str | None, shard_by: str, delete_missing: bool, max_delete: int | str,
                  access_tier: str | None) -> tuple[Destination, RetryPolicy, Shard | None, str | None]:
    """The destination, the retry policy, the shard and the access tier; ConfigurationError
    before anything is uploaded when one of them, or the deletion limit, is wrong."""
    destination = Destination.checked(container, prefix, credentials_block)
    policy = RetryPolicy.checked(retries, storage_timeout)
    part = Shard.parse(shard, shard_by)
    check_mirror(part, delete_missing)
    DeleteLimit.parse(max_delete)
    return destination, policy, part, check_access_tier(access_tier)


def failed_before_copy(exc: Exception, listing: FileListing, destination: Destination, dry_run: bool,
                       started: float):
    """The end of a run that stopped before any copy (no lock, storage gone), with a summary
    that says why."""
    summary = BackupSummary(outcome="failed", error=str(exc), dry_run=dry_run, root=listing.root,
                            destination=destination.describe(), duration_seconds=time.monotonic() - started)
    publish_summary(summary)
    return failed_state(summary)


def copy_order(walk: Iterator[Batch], dry_run: bool) -> tuple[Iterator[Batch], int]:
    """The batches in the order they are copied, and how many are walked ahead. Up to two
    copies queue behind each running one, and heaviest first within as many batches walked
    ahead: a tree of that many batches is ordered exactly as a whole list. A dry run keeps
    no checkpoint per batch: fewer, larger task runs. The first batch is taken at once,
    which fills the look-ahead: a small tree is walked whole before the run announces it."""
    ahead = 2 * copy_slots()
    batches = heaviest_first_within(walk, ahead)
    if dry_run:
        batches = joined(batches, DRY_RUN_BATCHES_PER_TASK)
    first = next(batches, None)
    return chain([first] if first is not None else [], batches), ahead


class FanIn:
    """The fan-in of a backup: each finished batch goes to the run's manifest, the tally,
    the paths walked (mirror mode only) and both progress displays (the terminal's line
    and the run's progress artifact)."""

    def __init__(self, listing: FileListing, history: RunHistory, keep_paths: bool):
        self.listing, self.history = listing, history
        self.tally = BackupTally()
        self.walked: list[str] = []  # mirror mode only: the paths the walk saw, for the deletion pass
        self.keep_paths = keep_paths
        progress.reset(listing.files, listing.bytes)
        progress.expect(listing.files, listing.bytes, counting=listing.walking)
        self.shown = ProgressArtifact(listing.files, listing.bytes, counting=listing.walking)
        self.counting = listing.walking
        self.copy_started = time.monotonic()

    def stopping(self) -> bool:
        """The run cannot go on (root vanished, storage gone, stopped): submit no more batches."""
        return bool(self.tally.run_error)

    def add(self, batch: Batch, result, cached: bool) -> None:
        listing = self.listing
        self.history.add_batch(result, batch)
        if self.keep_paths:
            self.walked.extend(f.path for f in batch)
        # The manifest has the entries: the tally drops them, so memory stays bounded.
        self.tally.add(replace(result, entries=None), cached, batch.parts)
        if self.counting and not listing.walking:
            announce_listed(listing)
            self.counting = False
        progress.expect(listing.files, listing.bytes, counting=self.counting)
        self.shown.expect(listing.files, listing.bytes, counting=self.counting)
        self.shown.advance(len(batch), batch.bytes)

    def summary(self, destination: Destination, dry_run: bool, part: Shard | None, started: float) -> BackupSummary:
        summary = self.tally.summary(
            self.listing, root=self.listing.root, destination=destination.describe(), dry_run=dry_run,
            duration_seconds=time.monotonic() - started, copy_seconds=time.monotonic() - self.copy_started,
        )
        if part is not None:
            summary.shard = str(part)
        return summary


def mirror_deletions(summary: BackupSummary, fan_in: FanIn, destination: Destination, include: list[str],
                     exclude: list[str], dry_run: bool, policy: RetryPolicy, max_delete: int | str) -> BackupSummary:
    """Mirror mode: delete the blobs of files no longer in the tree, unless the run's outcome
    blocks it (mirror.blocker); the summary with the deletions."""
    listing = fan_in.listing
    mirrored = delete_missing_files(destination, listing, quote(fan_in.walked), include, exclude, dry_run,
                                    blocker(listing, summary.outcome, summary.files_failed), policy, max_delete)
    return summary.with_deletions(mirrored)


def backup_end(summary: BackupSummary):
    """Publish the summary; the run's end state: failed, incomplete (some files failed) or the summary."""
    publish_summary(summary)
    return backup_state(summary)
