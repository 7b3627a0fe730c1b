"""What the batch tasks share: checkpoint keys, which failures are worth a task retry, the
run's storage budget, what earlier attempts of a task run finished, and how a finished
batch future becomes a result."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prefect.tasks import exponential_backoff

from site_backup import CHECKPOINT_VERSION
from site_backup.errors import describe
from site_backup.files import Problem
from site_backup.retry import RetryPolicy, StorageBudget


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


def files_changed_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry a batch only for what the storage retry policy cannot
    absorb, files that changed while they were read. Storage errors were retried by the
    run's policy already (site_backup/retry.py); a run that ended is not retried."""
    try:
        state.result()
    except BatchIncomplete as exc:
        return exc.result.transient_failures > 0 and not exc.result.run_error
    except Exception:
        return False
    return False


# The task's retries: only files that changed while read (each already read twice).
BATCH_RETRIES = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
                     retry_condition_fn=files_changed_only)

_budgets_lock = threading.Lock()
_budgets: OrderedDict = OrderedDict()


def run_budget(policy: RetryPolicy, account_url: str) -> StorageBudget:
    """The storage budget of the current flow run (shared by its tasks in this process)."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    key = (str(context.task_run.flow_run_id) if context else "", account_url, policy)
    with _budgets_lock:
        if key not in _budgets:
            _budgets[key] = StorageBudget(policy, account_url)
            while len(_budgets) > 64:  # a long-lived worker runs many flows
                _budgets.popitem(last=False)
        return _budgets[key]


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
