"""The history of one backup run, from its lock to its manifest, owned by one object.

`RunHistory.open` takes the run's lock (site_backup/locks.py: waiting for, or refused by,
a prune of an overlapping prefix) before the run snapshots anything, and starts its
manifest; `add_batch` streams the manifest as batches finish; `commit` writes it (a failed
run writes none) and releases the lock; `close` releases the lock on any other way out
(configuration error, exception, SIGTERM, Ctrl-C). It is a context manager, and `close` may
be called any number of times.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

from .errors import describe
from .history import ManifestWriter, RunRecord
from .locks import Lease, lock_for_backup
from .retry import STOP

# How long a failed or stopped run waits to give its lock back before leaving it to expire.
RELEASE_SECONDS = 1.0


class RunHistory:
    """A run's lock and manifest; both None when the run keeps no history (a dry run, or
    credentials that may not write the history container)."""

    def __init__(self, manifest: ManifestWriter | None = None, lock: Lease | None = None,
                 warn: Callable[[str], None] = lambda message: None, part: bool = False):
        self.manifest, self.lock, self.warn = manifest, lock, warn
        self.part = part  # a shard's: staged for the sharded run to commit, never committed here

    @classmethod
    def open(cls, history_store, open_lock_store, backup_store, prefix: str, run_id: str, *, shard=None,
             run_manifest: str | None = None, warn: Callable[[str], None] = lambda message: None,
             wait: float | None = None) -> "RunHistory":
        """Take the run's lock, then start its manifest. A shard of a sharded run stages its
        part into `run_manifest`, the sharded run's, which commits it once every shard has
        finished; a shard run on its own writes none (a manifest of part of the tree would
        let --as-of restore that part as if it were the whole tree; the lock still keeps
        prunes out)."""
        lock = lock_for_backup(open_lock_store, prefix, run_id, warn, wait)
        manifest = ManifestWriter(history_store, prefix, run_id, dt.datetime.now(dt.timezone.utc),
                                  backup_store=backup_store, name=run_manifest if shard is not None else None)
        if shard is not None and not run_manifest:
            manifest.broken = f"shard {shard} holds part of the tree, and run manifests describe whole trees"
        return cls(manifest, lock, warn, part=shard is not None and bool(run_manifest))

    def stage_part(self, summary) -> dict | None:
        """A shard's end: stage the rest of its part of the sharded run's manifest (none for
        a failed shard: the sharded run writes no manifest then) and release the lock.
        Returns the part, or None with a warning saying why there is none."""
        part = None
        try:
            if self.manifest is not None and summary.outcome != "failed" and not self.manifest.broken:
                try:
                    part = self.manifest.finish_part()
                except Exception as exc:
                    self.manifest.broken = describe(exc)
            if self.manifest is not None and self.manifest.broken:
                self.warn(f"no part of the sharded run's manifest from this shard: {self.manifest.broken}")
        finally:
            self.close(hurried=summary.outcome == "failed")
        return part

    def __enter__(self) -> "RunHistory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_batch(self, result, batch) -> None:
        """The files of one finished batch, into the manifest."""
        if self.manifest is not None:
            self.manifest.add_batch(result, batch)

    def commit(self, summary, parts: list[dict | None] | None = None) -> RunRecord | None:
        """Write the manifest with the run's summary (none for a failed run: it claims
        nothing), then release the lock. A sharded run passes its shards' `parts`: the one
        manifest of the whole tree is committed from them, none when a shard left no part.
        A manifest that cannot be written costs the run its history, not its outcome: a
        warning says why."""
        manifest, record = self.manifest, None
        try:
            if manifest is not None and parts is not None and any(p is None for p in parts):
                manifest.broken = manifest.broken or "a shard left no part of the manifest (see its run's log)"
            if manifest is not None and summary.outcome != "failed" and not manifest.broken:
                end = (summary.model_dump(mode="json"), summary.root, summary.destination,
                       dt.datetime.now(dt.timezone.utc))
                try:
                    record = manifest.finish(*end) if parts is None else manifest.finish_parts(parts, *end)
                except Exception as exc:
                    manifest.broken = describe(exc)
            if manifest is not None and manifest.broken:
                self.warn(f"no manifest for this run (its files are backed up): {manifest.broken}")
        finally:
            self.close(hurried=summary.outcome == "failed")
        return record

    def close(self, hurried: bool = False) -> None:
        """Release the lock (once); say so when its blob could not be deleted. A failed or
        stopped run waits at most RELEASE_SECONDS for that: its storage may be what failed."""
        lock, self.lock = self.lock, None
        if lock is None:
            return
        refused = lock.release(RELEASE_SECONDS if hurried or STOP.is_set() else None)
        if isinstance(refused, TimeoutError):
            self.warn(f"the run's lock blob {lock.name} was not deleted ({refused}); its lease ends by itself "
                      f"within a minute, and the next prune removes the blob")
        elif refused is not None:
            self.warn(f"the run's lock blob {lock.name} could not be deleted ({describe(refused)}): give the "
                      f"credentials the delete permission (a SAS needs d); the lease ends by itself within a minute")
