"""What the batch tasks share: checkpoint keys, which failures are worth a retry, what
earlier attempts of a task run finished, and how a finished batch future becomes a result."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prefect.tasks import exponential_backoff

from site_backup import CHECKPOINT_VERSION
from site_backup.errors import describe, is_transient
from site_backup.files import Problem


class BatchIncomplete(Exception):
    """Some files of a batch failed; carries the batch's result (anything with `failed`
    and `transient_failures`) so nothing is lost. A failed task run is never
    checkpointed, so a later run tries those files again."""

    def __init__(self, result: Any):
        super().__init__(result)  # the only arg, so the exception pickles and unpickles
        self.result = result

    def __str__(self) -> str:
        failed = self.result.failed
        first = f"{failed[0].path}: {failed[0].reason}" if failed else ""
        if len(first) > 200:
            first = "..." + first[-197:]
        return f"{len(failed)} file(s) failed, first {first}"


def transient_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry a task only when trying again may help."""
    try:
        state.result()
    except BatchIncomplete as exc:
        return exc.result.transient_failures > 0
    except Exception as exc:
        return is_transient(exc)
    return False


# Retry policies for the decorators. A batch task waits longer between attempts: by
# then the storage SDK already retried each request six times.
BATCH_RETRIES = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
                     retry_condition_fn=transient_only)
QUICK_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)


@dataclass
class EarlierAttempts:
    """What earlier attempts of one task run did: the files they finished (so a retry
    neither redoes them nor miscounts them as unchanged) and their storage retries."""

    finished: dict[str, Any] = field(default_factory=dict)
    storage_retries: int = 0


_attempts: dict[str, EarlierAttempts] = {}


def earlier_attempts(context) -> EarlierAttempts:
    """The record for the current task run (kept across its retries, in this process)."""
    return _attempts.setdefault(str(context.task_run.id), EarlierAttempts())


def end_attempt(context, failed: bool) -> None:
    """Forget the record once the task run succeeded or has no retry left."""
    if not failed or context.task_run.run_count > context.task.retries:
        _attempts.pop(str(context.task_run.id), None)


def checkpoint_key(kind: str, identity: list, items: Iterable[str]) -> str:
    """A checkpoint key: a hash of what the work is (its identity, then one line per
    file or blob), never of which run or which code did it."""
    h = hashlib.sha256(json.dumps([CHECKPOINT_VERSION, *identity]).encode())
    for item in items:
        h.update(f"\0{item}".encode("utf-8", "surrogatepass"))
    return f"site-backup-{kind}-{h.hexdigest()}"


def batch_outcome(future, batch: list, failed_result: Callable[[list[Problem]], Any]) -> tuple[Any, bool]:
    """A finished batch task as (result, came from a checkpoint). A batch whose task
    failed keeps the result of its files; one that failed whole (an unexpected error)
    becomes `failed_result` listing every file with the reason."""
    future.wait()  # sets the future's final state; without it `state` asks the server
    state = future.state
    if state.is_completed():
        return future.result(), state.name == "Cached"
    error = state.result(raise_on_failure=False)
    if isinstance(error, BatchIncomplete):
        return error.result, False
    reason = describe(error) if isinstance(error, BaseException) else f"task ended {state.name}"
    return failed_result([Problem(f.path, reason) for f in batch]), False
