"""What a batch task hands back: its result, a BatchIncomplete carrying the result when
some files failed, or a failure; and how a finished batch future becomes a result."""

from __future__ import annotations

from typing import Any, Callable

from site_backup.errors import describe
from site_backup.files import Problem
from site_backup.units import count


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
        return f"{count(len(failed), 'file')} failed, first {first}"


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
