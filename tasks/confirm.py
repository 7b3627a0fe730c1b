"""Confirm the batches that came from checkpoints against this run's listing of the
destination, and copy again, comparing with storage, the files a checkpoint vouched for
whose blob is gone or holds other content (site_backup/confirm.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.utilities.annotations import quote

from site_backup.accounts import open_store
from site_backup.ahead import answered
from site_backup.confirm import unconfirmed
from site_backup.remote import list_destination, listed_ahead
from site_backup.copy import BatchResult, CopyOptions
from site_backup.destination import Destination
from site_backup.errors import describe
from site_backup.files import Batch, display_path
from site_backup.names import blob_folder
from site_backup.retry import RetryPolicy
from site_backup.units import count
from tasks.outcomes import batch_outcome
from tasks.retry import run_budget

# Batches from checkpoints confirmed by one task run: a no-change run makes one task run
# and one listing per folder for this many batches, not one of each per batch.
CONFIRM_BATCHES = 8


@task(name="list-destination", cache_policy=NO_CACHE, persist_result=False)
def read_destination(destination: Destination, policy: RetryPolicy = RetryPolicy()) -> dict | None:
    """Every blob of the destination by name, from one flat listing read while the run
    starts, or None when it holds too many to keep (then each folder is listed on need)."""
    folder = blob_folder(destination.prefix)
    return answered(listed_ahead(destination.account_url, destination.container, folder),  # the command line's
                    lambda: list_destination(open_store(destination, run_budget(policy, destination.account_url)), folder))


def listing_answer(listed: PrefectFuture | None) -> dict | None:
    """What `listed` (a read_destination of this run) found, waited for; None when there is
    no listing, it failed (its task run says why) or the destination was too large."""
    answer = listed.result(raise_on_failure=False) if listed is not None else None
    return answer if isinstance(answer, dict) else None


@task(name="confirm-batches", cache_policy=NO_CACHE, persist_result=False)
def confirm_batches(claims: Batch, destination: Destination, policy: RetryPolicy = RetryPolicy(),
                    listed: dict | None = None) -> list[frozenset[str]]:
    """For each (batch, entries) from a checkpoint, the paths storage does not hold as
    recorded, from `listed` (the run's listing of the destination), else a listing per folder."""
    store = open_store(destination, run_budget(policy, destination.account_url))
    return unconfirmed(store, destination.prefix, claims, listed)


def confirmed(finished: Iterable[tuple[Batch, PrefectFuture]], copy, root: str, destination: Destination,
              options: CopyOptions, policy: RetryPolicy, listed: PrefectFuture | None = None,
              group: int = CONFIRM_BATCHES) -> Iterator[tuple[Batch, BatchResult, bool]]:
    """Each finished copy as (batch, result, from a checkpoint), a checkpoint's result only
    once this run's listing showed every blob it claims (`listed`, the read_destination
    started with the run, else a listing per folder). A batch with files storage does not
    hold as recorded is copied again by `copy` (the run's copy task) without its checkpoint,
    those files compared by content, and its new result is yielded instead."""
    read: list[dict | None] = []  # the listing's answer, once needed

    def listing() -> dict | None:
        if not read:  # no listing leaves a listing per folder
            read.append(listing_answer(listed))
        return read[0]
    held: list[tuple[Batch, BatchResult]] = []  # from checkpoints, not yet sent to be confirmed
    checks: list[tuple[PrefectFuture, list[tuple[Batch, BatchResult]]]] = []

    def failed(problems) -> BatchResult:
        return BatchResult(failed=problems)

    def send() -> None:
        claims = Batch((batch, getattr(result, "entries", None)) for batch, result in held)
        # quote: Prefect would otherwise visit every entry and every listed blob for futures.
        checks.append((confirm_batches.submit(quote(claims), destination, policy, quote(listing())), list(held)))
        held.clear()

    def settle(check) -> Iterator[tuple[Batch, BatchResult, bool]]:
        future, batches = check
        future.wait()
        answer = future.result(raise_on_failure=False)
        if not future.state.is_completed():  # not confirmed: copy every file again, comparing with storage
            get_run_logger().warning("%d batch(es) from checkpoints could not be confirmed (%s): copying them again",
                                     len(batches), describe(answer) if isinstance(answer, BaseException) else answer)
            answer = [frozenset(f.path for f in batch) for batch, _ in batches]
        again = []
        for (batch, result), missing in zip(batches, answer):
            if not missing:
                yield batch, result, True
                continue
            if future.state.is_completed():
                get_run_logger().warning(
                    "%s a checkpoint vouched for not stored as it recorded (first %s): copying them again",
                    count(len(missing), "file"), display_path(min(missing)))
            again.append((batch, copy.with_options(refresh_cache=True).submit(
                root, batch, destination=destination, options=replace(options, recheck=missing), policy=policy)))
        for batch, redo in again:
            result, _ = batch_outcome(redo, batch, failed)
            yield batch, result, False

    for batch, future in finished:
        result, cached = batch_outcome(future, batch, failed)
        if not cached:
            yield batch, result, False
        else:
            held.append((batch, result))
            if len(held) >= group:
                send()
        while checks and checks[0][0].wrapped_future.done():
            yield from settle(checks.pop(0))
    if held:
        send()
    for check in checks:
        yield from settle(check)
    if listed is not None:  # unused when no batch came from a checkpoint; a run leaves no task running
        listed.wait()
