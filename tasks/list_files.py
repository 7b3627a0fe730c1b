"""The list-files task: walk the tree into batches (the sample's E2_GetFileList), handing
each batch on as soon as it is cut."""

from __future__ import annotations

import contextvars
from typing import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.files import Batch, FileListing, heaviest_first, open_listing
from site_backup.globs import compile_patterns
from site_backup.walker import ChildWalk
from site_backup.shards import Shard
from tasks.errors import task_reports_configuration_error


@task(name="list-files", cache_policy=NO_CACHE)
@task_reports_configuration_error
def list_files(
    root: str,
    include: list[str],
    exclude: list[str],
    follow_symlinks: bool,
    max_files: int,
    max_bytes: int,
    shard: Shard | None = None,
) -> Iterator[FileListing | Batch]:
    """Walk `root` as the flow asks for work: first the listing (the root, its identity,
    and counts that grow as the walk goes), then each batch of regular files as soon as it
    is cut (of one shard, if given), walked by a process of its own. Links, special files
    and unreadable folders are reported in the listing."""
    listing = open_listing(root)
    compile_patterns([*include, *exclude])  # a bad pattern fails the run before anything is created
    walk = ChildWalk(listing, include=include, exclude=exclude, follow_symlinks=follow_symlinks,
                     max_files=max_files, max_bytes=max_bytes, shard=shard)  # walking while the flow prepares
    try:
        yield listing
        yield from walk
    finally:
        walk.close()


class Walk:
    """A run of the list-files task, stepped from the flow: `listing` at once, then one
    batch per `next()`, walked only then.

    Prefect runs a generator task in the caller's thread and enters the task run's context
    around each step, and a generator's context variables are its caller's: the flow would
    go on between batches as if inside list-files (its logger, and the copy tasks it
    submits taking list-files as their parent). Each step runs in a context of its own."""

    def __init__(self, run: Iterator[FileListing | Batch]):
        self._context = contextvars.copy_context()
        self._run = run
        self.listing: FileListing = self._context.run(next, run)

    def __iter__(self) -> "Walk":
        return self

    def __next__(self) -> Batch:
        return self._context.run(next, self._run)

    def close(self) -> None:
        """End the task run early (the flow stops asking for batches)."""
        self._context.run(self._run.close)


def listed_whole(walk: Walk) -> FileListing:
    """The whole listing with every batch, heaviest first: for flows that need the tree at
    once (verify compares it with the blob listing)."""
    walk.listing.batches = heaviest_first(list(walk))
    return walk.listing
