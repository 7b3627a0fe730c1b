"""The batch tasks' retry policy: which failures are worth a task retry, the run's storage
budget, and what earlier attempts of a task run finished."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from prefect.tasks import exponential_backoff

from site_backup.retry import RetryPolicy, StorageBudget
from tasks.outcomes import BatchIncomplete


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
