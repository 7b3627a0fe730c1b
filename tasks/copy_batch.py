"""The copy task: back up one batch of files (the sample's E2_CopyFileToBlob, batched)."""

from __future__ import annotations

import hashlib
import json

from prefect import task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from site_backup import CHECKPOINT_VERSION
from site_backup.copy import BatchResult, CopyOptions, FileOutcome, copy_batch as copy_files
from site_backup.destination import Destination, open_store
from site_backup.files import FileEntry
from site_backup.progress import progress
from tasks.retry import BatchIncomplete, transient_only

# Outcomes of files finished by an earlier attempt of the same task run, so a retry
# neither re-sends them nor miscounts them as unchanged.
_finished_by_attempt: dict[str, dict[str, FileOutcome]] = {}


def batch_checkpoint_key(context, parameters) -> str | None:
    """The checkpoint key: what the batch is (destination, and each file's path, size and
    mtime), never which run or which code made it. Dry runs leave no checkpoint."""
    options: CopyOptions = parameters["options"]
    if options.dry_run:
        return None
    destination: Destination = parameters["destination"]
    h = hashlib.sha256(
        json.dumps([CHECKPOINT_VERSION, destination.account_url, destination.container, destination.prefix]).encode()
    )
    for f in parameters["batch"]:
        h.update(f"\0{f.path}\0{f.size}\0{f.mtime_ns}".encode("utf-8", "surrogateescape"))
    return f"site-backup-batch-{h.hexdigest()}"


@task(
    name="copy-batch",
    cache_key_fn=batch_checkpoint_key,
    persist_result=True,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=transient_only,
)
def copy_batch(root: str, batch: list[FileEntry], destination: Destination, options: CopyOptions) -> BatchResult:
    """Copy one batch; raises BatchIncomplete (with the partial result) if any file failed."""
    context = TaskRunContext.get()
    run_id = str(context.task_run.id)
    finished = _finished_by_attempt.setdefault(run_id, {})
    outcomes = copy_files(root, batch, open_store(destination), destination.prefix, options,
                          done=finished, on_file=progress.add)
    finished.update((o.path, o) for o in outcomes if o.status in ("uploaded", "unchanged"))
    result = BatchResult.from_outcomes(outcomes)
    result.retries += context.task_run.run_count - 1
    last_attempt = context.task_run.run_count > context.task.retries
    if not result.failed or last_attempt:
        _finished_by_attempt.pop(run_id, None)
    if result.failed:
        raise BatchIncomplete(result)
    return result
