"""Which task failures are worth a retry."""

from __future__ import annotations

from site_backup.copy import BatchResult
from site_backup.errors import is_transient


class BatchIncomplete(Exception):
    """Some files of a batch failed; carries the batch's result so nothing is lost. A
    failed task run is never checkpointed, so a later run tries those files again."""

    def __init__(self, result: BatchResult):
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
