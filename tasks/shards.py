"""Run the shards of a sharded backup: as child runs of a deployment, picked up by any
worker of its pool, or as tasks on a Dask cluster; each shard is retried on its own."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from site_backup.errors import ConfigurationError, redact
from site_backup.sharded import ShardRow, shard_row
from site_backup.shards import Shard
from site_backup.summary import BackupSummary, RunFailed

# Waiting this long with no shard picked up by a worker is worth a warning: the pool may have none.
UNCLAIMED_WARNING_SECONDS = 60.0


def child_name(parent_name: str, shard: Shard, attempt: int) -> str:
    """The child run's name in the UI: the parent's, the shard, and the attempt after the first."""
    name = f"{parent_name}-shard-{shard.index}-of-{shard.count}"
    return name if attempt == 0 else f"{name}-retry-{attempt}"


def summary_of(state) -> tuple[BackupSummary | None, str]:
    """The summary a finished child run persisted (also for a failed run, inside its
    RunFailed), or None and why it cannot be read here."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:
        return None, (f"its summary cannot be read here ({redact(str(exc))[:200]}): give the parent and the "
                      f"workers shared result storage (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK)")
    if isinstance(result, RunFailed):
        return result.summary, ""
    if isinstance(result, BackupSummary):
        return result, ""
    if isinstance(result, dict) and "files_total" in result:
        return BackupSummary.model_validate(result), ""
    if isinstance(result, BaseException):
        return None, redact(str(result))[:300] or type(result).__name__
    return None, f"it left no summary ({state.name}: {redact(state.message or '')[:200]})"


class WorkerShards:
    """The shards' child runs of `deployment`, started with run_deployment and watched
    together (one API request per poll, whatever the number of shards)."""

    def __init__(self, deployment: str, parameters: dict[str, Any], shards: list[Shard], retries: int,
                 parent_id: str, parent_name: str, poll_seconds: float = 2.0):
        self.deployment, self.parameters, self.retries = deployment, parameters, retries
        self.parent_id, self.parent_name, self.poll = parent_id, parent_name, poll_seconds
        self.shards = shards
        self.attempt = {s: 0 for s in shards}  # the attempt number of the shard's current run
        self.started = {s: 0 for s in shards}  # runs this parent run started (or found) for it
        self.run = {}

    def start(self, shard: Shard):
        """Start (or find again, after the parent itself was retried) the shard's run. Its
        idempotency key names parent, shard and attempt: a retried parent finds the runs it
        started before, reuses the finished ones and goes on from the failed ones."""
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        while True:
            attempt = self.attempt[shard]
            try:
                run = run_deployment(
                    self.deployment, parameters=dict(self.parameters, shard=str(shard), shard_by=shard.by),
                    timeout=0, flow_run_name=child_name(self.parent_name, shard, attempt),
                    idempotency_key=f"{self.parent_id}/shard-{shard.index}-of-{shard.count}/attempt-{attempt}",
                    tags=["sharded-backup"],
                )
            except ObjectNotFound:
                raise ConfigurationError(
                    f"no deployment {self.deployment!r} on this Prefect server: run `make deploy` (it deploys "
                    f"backup-site-content/shard), or name another with the deployment parameter") from None
            self.run[shard] = run
            if run.state is not None and run.state.is_final() and not run.state.is_completed() \
                    and self.started[shard] == 0:
                self.attempt[shard] += 1  # a failed run of an earlier parent attempt: start a new one
                continue
            self.started[shard] += 1
            return run

    def run_all(self) -> list[tuple[ShardRow, BackupSummary | None]]:
        """Start every shard, wait for all, retry each failed or crashed one up to `retries` times."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        logger = get_run_logger()
        for shard in self.shards:
            self.start(shard)
        done: dict[Shard, tuple[ShardRow, BackupSummary | None]] = {}
        waiting_since, warned = time.monotonic(), False
        client = get_client(sync_client=True)
        while len(done) < len(self.shards):
            time.sleep(self.poll)
            ids = [self.run[s].id for s in self.shards if s not in done]
            runs = {r.id: r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))}
            claimed = False
            for shard in [s for s in self.shards if s not in done]:
                run = runs.get(self.run[shard].id, self.run[shard])
                state = run.state
                claimed |= state is not None and not state.is_scheduled() and not state.is_pending()
                if state is None or not state.is_final():
                    continue
                summary, why = summary_of(state)
                if state.is_completed():  # a summary that cannot be read here would not be on a rerun either
                    done[shard] = self._row(shard, run, summary, why), summary
                elif self.started[shard] <= self.retries:
                    logger.warning("shard %s: run %s ended %s%s; starting it again (retry %d of %d; finished "
                                   "batches come from its checkpoints)", shard, run.name, state.name,
                                   f" ({why})" if why else "", self.started[shard], self.retries)
                    self.attempt[shard] += 1
                    self.start(shard)
                else:
                    done[shard] = self._row(shard, run, summary, why or f"ended {state.name}"), summary
            if claimed:
                waiting_since = time.monotonic()
            elif not warned and time.monotonic() - waiting_since > UNCLAIMED_WARNING_SECONDS:
                warned = True
                logger.warning("no worker has picked up a shard for %.0f s: start a worker for the pool of %s "
                               "(`make worker`)", UNCLAIMED_WARNING_SECONDS, self.deployment)
        return [done[s] for s in self.shards]

    def _row(self, shard: Shard, run, summary: BackupSummary | None, error: str) -> ShardRow:
        return shard_row(shard, summary, flow_run_id=str(run.id), flow_run_name=run.name, state=run.state.name,
                         attempts=self.started[shard], ran_on=run.infrastructure_pid or "", error=error)


@task(name="run-shards-on-workers", cache_policy=NO_CACHE, persist_result=False)
def run_shards_on_workers(deployment: str, parameters: dict[str, Any], shards: list[Shard], retries: int,
                          poll_seconds: float = 2.0) -> list[tuple[ShardRow, BackupSummary | None]]:
    """One child run of `deployment` per shard, on any worker of its pool; each failed or
    crashed one is started again, up to `retries` times."""
    from prefect.runtime import flow_run

    runner = WorkerShards(deployment, parameters, shards, retries, str(flow_run.id), flow_run.name or "sharded",
                          poll_seconds)
    return runner.run_all()


@task(name="back-up-shard", cache_policy=NO_CACHE, persist_result=False)
def back_up_shard(parameters: dict[str, Any], shard: Shard, flow: str) -> tuple[ShardRow, BackupSummary | None]:
    """Back up one shard here (a Dask worker with the tree mounted): the backup flow, named
    by the module path the sharded flow gives (as a deployment names it), runs as a nested
    flow run of this task."""
    from prefect.context import TaskRunContext
    from prefect.flows import load_flow_from_entrypoint

    backup_flow = load_flow_from_entrypoint(flow, use_placeholder_flow=False)
    state = backup_flow(**parameters, shard=str(shard), shard_by=shard.by, return_state=True)
    summary, why = summary_of(state)
    attempts = TaskRunContext.get().task_run.run_count if TaskRunContext.get() else 1
    row = shard_row(shard, summary, flow_run_id=str(state.state_details.flow_run_id or ""), state=state.name,
                    attempts=attempts, ran_on=f"{socket.gethostname()}:{os.getpid()}", error=why)
    if summary is None or summary.outcome == "failed":
        raise ShardFailed(row, summary)  # Prefect retries the task; the backup's checkpoints make it resume
    return row, summary


class ShardFailed(Exception):
    """A shard's backup that failed; carries its row and summary for the parent's report."""

    def __init__(self, row: ShardRow, summary: BackupSummary | None):
        super().__init__(row, summary)
        self.row, self.summary = row, summary

    def __str__(self) -> str:
        return f"shard {self.row.shard} failed: {self.row.error or (self.summary.error if self.summary else '')}"


def run_shards_on_dask(parameters: dict, parts: list[Shard], retries: int, address: str | None, flow: str):
    """One task per shard on a Dask cluster (an existing one at `address`, else a temporary
    local one), each running the backup flow at module path `flow`; Prefect retries a failed
    shard's task, Dask moves it off a lost worker."""
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=address) if address else DaskTaskRunner()
    task = back_up_shard.with_options(retries=retries, retry_delay_seconds=1)
    with runner:
        futures = [runner.submit(task, parameters={"parameters": parameters, "shard": part, "flow": flow}) for part in parts]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except ShardFailed as exc:
                outcomes.append((exc.row, exc.summary))
    return outcomes
