"""The copy task: back up one batch of files (the sample's E2_CopyFileToBlob, batched)."""

from __future__ import annotations

from datetime import timedelta
from typing import Callable, Iterable, Iterator

from prefect import get_run_logger, task
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from site_backup.accounts import open_store
from site_backup.copy import BatchResult, CopyOptions, copy_batch as copy_files, files_in_flight
from site_backup.destination import Destination
from site_backup.files import Batch, FileEntry
from site_backup.progress import progress
from site_backup.retry import RetryPolicy
from tasks.checkpoints import checkpoint_key
from tasks.confirm import listing_answer
from tasks.outcomes import BatchIncomplete
from tasks.retry import BATCH_RETRIES, earlier_attempts, end_attempt, run_budget


def batch_checkpoint_key(context, parameters) -> str | None:
    """The checkpoint key: what the batch is (destination and its generation, and each
    file's path, size and mtime), never which run or which code made it. Dry runs leave
    no checkpoint."""
    options: CopyOptions = parameters["options"]
    if options.dry_run:
        return None
    d: Destination = parameters["destination"]
    return checkpoint_key("batch", [d.account_url, d.container, d.prefix, d.generation],
                          (f"{f.path}\0{f.size}\0{f.mtime_ns}" for f in parameters["batch"]))


def with_checkpoints(refresh: bool = False, block: str | None = None, days: float | None = None,
                     dry_run: bool = False):
    """The copy task with the run's checkpoint settings: ignore earlier checkpoints,
    keep them in a saved AzureBlobStorageContainer block instead of the local Prefect
    home, or let them expire after some days. A dry run keeps no checkpoint at all."""
    if dry_run:  # its results live in memory: nothing is written per batch
        return copy_batch.with_options(persist_result=False)
    options: dict = {}
    if refresh:
        options["refresh_cache"] = True
    if block:
        options["result_storage"] = f"azure-blob-storage-container/{block}"
    if days:
        options["cache_expiration"] = timedelta(days=days)
    return copy_batch.with_options(**options) if options else copy_batch


@task(
    name="copy-batch",
    cache_key_fn=batch_checkpoint_key,
    persist_result=True,
    **BATCH_RETRIES,
)
def copy_batch(root: str, batch: list[FileEntry], destination: Destination, options: CopyOptions,
               policy: RetryPolicy = RetryPolicy(), listed: PrefectFuture | None = None) -> BatchResult:
    """Copy one batch; raises BatchIncomplete (with the partial result) if any file failed.
    `listed`: the run's list-destination (see `shared_listing`), which then answers what
    storage holds; else each folder of the batch is listed."""
    context = TaskRunContext.get()
    earlier = earlier_attempts(context)
    store = open_store(destination, run_budget(policy, destination.account_url), options.access_tier)
    outcomes = copy_files(root, batch, store, destination.prefix, options, done=earlier.finished,
                          on_file=progress.add, listed=listing_answer(listed))
    earlier.finished.update((o.path, o) for o in outcomes if o.status in ("uploaded", "unchanged"))
    earlier.storage_retries += store.retries.total
    result = BatchResult.from_outcomes(outcomes)
    result.retries += earlier.storage_retries + context.task_run.run_count - 1
    if not options.listing_suffices:
        result.in_flight, result.in_flight_peak = files_in_flight(options)
    if store.retries.total:
        get_run_logger().warning("storage requests retried: %s", store.retries.describe())
    end_attempt(context, failed=bool(result.failed))
    if result.failed:
        raise BatchIncomplete(result)
    return result


class CopyTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread-pool task runner, saying how many tasks it runs at once (`slots`):
    Prefect keeps that number private, and the flow sizes its look-ahead by it."""

    def __init__(self, max_workers: int | None = None):
        super().__init__(max_workers=max_workers)
        self.slots = max_workers

    def duplicate(self) -> "CopyTaskRunner":
        return type(self)(max_workers=self.slots)


def copy_slots(default: int = 4) -> int:
    """How many copy tasks the flow run's task runner runs at once: a CopyTaskRunner's
    size, else `default` (a Dask cluster does not say)."""
    context = FlowRunContext.get()
    slots = getattr(context.task_runner, "slots", None) if context else None
    return slots if isinstance(slots, int) and 0 < slots < 1024 else default


def shared_listing(listed: PrefectFuture | None):
    """The run's list-destination as a copy task's `listed`, when the copy tasks run in
    this process (a thread pool; a Dask worker elsewhere cannot wait on it): quoted, so
    Prefect passes the future itself instead of waiting for it before each copy starts."""
    context = FlowRunContext.get()
    shared = listed is not None and context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner)
    return quote(listed) if shared else None


def copy_as_walked(submit: Callable[[Batch], PrefectFuture], batches: Iterable[Batch], max_pending: int,
                   until: Callable[[], bool] = lambda: False) -> Iterator[tuple[Batch, PrefectFuture]]:
    """Submit each batch as `batches` yields it, with no more than `max_pending` copies
    unfinished at once, and yield each (batch, future) as it finishes. The next batch is
    asked for only when there is room, so the walk never runs more than `max_pending`
    batches (plus what `batches` holds) ahead of the copies; none is asked for once
    `until()` is true (the run cannot go on)."""
    pending: dict[PrefectFuture, Batch] = {}
    for batch in batches:
        pending[submit(batch)] = batch
        while len(pending) >= max_pending:
            done = next(as_completed(list(pending)))
            yield pending.pop(done), done
        if until():
            break
    for done in as_completed(list(pending)):
        yield pending.pop(done), done
