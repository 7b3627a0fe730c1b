"""Deployments for real: a Prefect server on a free port, `scripts/deploy` (prefect deploy
from prefect.yaml), a process worker, `prefect deployment run --watch`, a crashed run resumed with
`prefect flow-run retry`, a schedule made through the API that survives a redeploy (the HTTP
API's tests, test_http_deployment.py, run on the same stack after these)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

from tests.conftest import PROJECT, assert_said_stopped, read_container
from tests.deployment_stack import PREFECT, client_call, run_artifacts, start_run


def test_prefect_deployment_run_watch_completes_and_backs_up(stack, make_tree, container_name):
    files = {"index.html": b"home", "docs/a b.txt": b"text", "big.bin": os.urandom(300_000)}
    root = make_tree(files)
    started = time.monotonic()
    run = subprocess.run(
        [PREFECT, "deployment", "run", "backup-site-content/local", "--param", f"root_directory={root}",
         "--param", f"container={container_name}", "--watch", "--watch-timeout", "240"],
        env=stack["env"], capture_output=True, text=True, timeout=300,
    )
    took = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + (stack["logs"] / "worker.log").read_text()[-3000:]
    assert "Completed" in run.stdout
    assert read_container(stack["azurite"], container_name) == files

    async def latest_run(client):
        from prefect.client.schemas.sorting import FlowRunSort

        [flow_run] = await client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
        return flow_run

    flow_run = client_call(stack, latest_run)
    assert flow_run.state.is_completed() and flow_run.parameters["container"] == container_name
    waited = (flow_run.start_time - flow_run.created).total_seconds()
    print(f"\ndeployment run: {took:.1f} s from `prefect deployment run` to Completed, "
          f"{waited:.1f} s of it before the flow started (worker pick-up and process start), "
          f"flow itself {flow_run.total_run_time.total_seconds():.1f} s")


def test_verify_and_restore_are_deployed_and_the_block_is_the_configured_storage(stack):
    import inspect

    import prefect_azure
    from prefect.blocks.core import Block
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker
    from prefect_azure.credentials import AzureBlobStorageCredentials

    async def read(client):
        found = {flow: await client.read_deployment_by_name(f"{flow}/local")
                 for flow in ("backup-site-content", "verify-backup", "restore-site-content", "prune-backups",
                              "backup-site-sharded")}
        found["shard"] = await client.read_deployment_by_name("backup-site-content/shard")
        return found

    deployments = client_call(stack, read)
    assert all(d.work_pool_name == "site-backup" for d in deployments.values())
    assert "target_directory" in deployments["restore-site-content"].parameter_openapi_schema["required"]
    # The shards' deployment has no concurrency limit (one at a time would queue the shards);
    # the sharded parent has one, like the whole-tree backup.
    limits = {name: d.global_concurrency_limit.limit if d.global_concurrency_limit else None
              for name, d in deployments.items()}
    assert limits["shard"] is None and limits["backup-site-sharded"] == limits["backup-site-content"] == 1, limits
    for name, deployment in deployments.items():  # what the UI's custom-run form shows
        properties = deployment.parameter_openapi_schema["properties"]
        assert all(spec.get("description") for spec in properties.values()), name
        assert properties["container"]["pattern"] and properties["container"]["maxLength"] == 63, name
    # scripts/deploy made the pool as `prefect work-pool create --type process` makes it, but
    # for the command that starts the engine on the checkout's Python (no supervisor process
    # first), and registered every block type of prefect-azure, as `prefect block register -m` does.
    async def pool_and_block_types(client):
        return await client.read_work_pool("site-backup"), {t.slug for t in await client.read_block_types()}

    pool, block_types = client_call(stack, pool_and_block_types)
    template = pool.base_job_template
    command = template["variables"]["properties"]["command"].pop("default")
    assert command == shlex.join([str(PROJECT / ".venv" / "bin" / "python"), "-m", "prefect.engine"])
    default = ProcessWorker.get_default_base_job_template()
    default["variables"]["properties"]["command"].pop("default")
    assert pool.type == "process" and template == default
    azure_types = {cls.get_block_type_slug() for _, cls in inspect.getmembers(prefect_azure) if Block.is_block_class(cls)}
    assert len(azure_types) >= 7 and azure_types <= block_types, azure_types - block_types
    # The block holds what this environment is configured for, not a fixed 127.0.0.1:10000.
    with temporary_settings(updates={PREFECT_API_URL: stack["api_url"]}):
        block = AzureBlobStorageCredentials.load("site-backup-storage")
    assert block.connection_string.get_secret_value() == stack["azurite"].connection_string


def test_schedule_made_in_the_api_survives_redeploy_and_runs(stack):
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    anchor = datetime.now(timezone.utc) + timedelta(seconds=5)

    async def add_schedule(client):
        dep = await client.read_deployment_by_name("backup-site-content/local")
        await client.create_deployment_schedules(
            dep.id, [DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(minutes=10),
                                                                         anchor_date=anchor), active=True)])
        return dep.id

    deployment_id = client_call(stack, add_schedule)
    try:
        schedule_survives_and_runs(stack, deployment_id)
    finally:
        async def remove_schedules(client):  # and their runs to come: later tests share the stack
            for schedule in (await client.read_deployment(deployment_id)).schedules:
                await client.delete_deployment_schedule(deployment_id, schedule.id)

        client_call(stack, remove_schedules)


def schedule_survives_and_runs(stack, deployment_id) -> None:
    redeploy = subprocess.run([str(PROJECT / "scripts" / "deploy")], cwd=PROJECT, env=stack["env"],
                              capture_output=True, text=True, timeout=300)
    assert redeploy.returncode == 0, redeploy.stderr[-3000:]

    async def schedules(client):
        return (await client.read_deployment(deployment_id)).schedules

    assert len(client_call(stack, schedules)) == 1, "prefect deploy replaced the schedule made in the UI/API"

    async def scheduled_runs(client):
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        return [r for r in runs if r.auto_scheduled]

    deadline = time.monotonic() + 180
    while True:
        runs = client_call(stack, scheduled_runs)
        if any(r.state.is_completed() for r in runs):
            break
        assert not any(r.state.is_final() and not r.state.is_completed() for r in runs), [r.state for r in runs]
        assert time.monotonic() < deadline, [r.state for r in runs]
        time.sleep(1)
    assert "index.html" in read_container(stack["azurite"], "backups")  # the deployment's default: sample-site


def wait_for_state(stack, flow_run_id: str, types: set[str], timeout: float):
    """The flow run's state once its type is one of `types`."""
    async def read(client):
        return (await client.read_flow_run(flow_run_id)).state

    deadline = time.monotonic() + timeout
    while True:
        state = client_call(stack, read)
        if state is not None and state.type.value in types:
            return state
        assert time.monotonic() < deadline, f"still {state} after {timeout} s"
        time.sleep(0.5)


def wait_for_worker_done(stack, flow_run_id: str, timeout: float) -> None:
    """Wait for the worker's `prefect.worker.executed-flow-run` event of the flow run: the
    worker has finished with it and will change its state no more."""
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    async def done(client):
        page = await client.read_events(EventFilter(
            event=EventNameFilter(name=["prefect.worker.executed-flow-run"]),
            any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"])), limit=1)
        return bool(page.events)

    deadline = time.monotonic() + timeout
    while not client_call(stack, done):
        assert time.monotonic() < deadline, f"the worker did not finish with {flow_run_id} within {timeout} s"
        time.sleep(0.5)


def flow_run_output(stack, flow_run_id: str):
    """The flow run's persisted result (the summary), read from the worker's result storage."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    async def read(client):
        state = (await client.read_flow_run(flow_run_id)).state
        return await state.aresult()

    with temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: stack["env"]["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]}):
        result = client_call(stack, read)
    return result.model_dump() if hasattr(result, "model_dump") else result


def flow_run_processes(flow_run_id: str) -> list[int]:
    """The processes a worker started for one flow run (they carry its id in their environment)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_crashed_deployment_run_resumes_with_flow_run_retry(stack, make_tree, tmp_path, container_name):
    from site_backup.credentials import azurite_connection_string
    from tests.faultproxy import FaultProxy

    files = {f"d{i % 7}/f{i:03d}.txt": f"file {i} ".encode() * (10 + i) for i in range(300)}
    root = make_tree(files)
    with FaultProxy(stack["azurite"].port) as proxy:
        proxy.latency = 0.04  # slow enough to kill the run part-way
        via_proxy = azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")
        flow_run_id = start_run(stack, "backup-site-content/local", {
            "root_directory": str(root), "container": container_name, "files_per_batch": 25, "files_in_flight": 2},
            {"env": {"AZURE_STORAGE_CONNECTION_STRING": via_proxy}})

        deadline = time.monotonic() + 180
        while proxy.landed() < 120:
            assert time.monotonic() < deadline, (stack["logs"] / "worker.log").read_text()[-3000:]
            time.sleep(0.05)
        for pid in flow_run_processes(flow_run_id):
            os.kill(pid, signal.SIGKILL)  # the process dies as in a crash or a recycled machine
        assert wait_for_state(stack, flow_run_id, {"CRASHED"}, 120).name == "Crashed"
        # The worker reports the crash twice (its runner, then the worker itself once the
        # runner has looked for on_crashed hooks); the second report turns a run retried in
        # between from Scheduled back into Crashed, and the retry is lost. Retry once the
        # worker says it is done with the run.
        wait_for_worker_done(stack, flow_run_id, 120)
        proxy.wait_until_idle()  # requests it was forwarding at the kill have landed
        landed_first = dict(proxy.writes)
        assert 120 <= len(landed_first) < 300

        retried = subprocess.run([PREFECT, "flow-run", "retry", flow_run_id], env=stack["env"],
                                 capture_output=True, text=True, timeout=120)
        assert retried.returncode == 0, retried.stdout[-2000:] + retried.stderr[-2000:]
        final = wait_for_state(stack, flow_run_id, {"COMPLETED", "FAILED", "CRASHED"}, 240)
        assert final.is_completed(), (final, (stack["logs"] / "worker.log").read_text()[-3000:])
        summary = flow_run_output(stack, flow_run_id)
        resent = sorted(name for name, n in proxy.writes.items() if n > 1)

    assert len(resent) <= 4, resent  # at most the files in flight at the kill
    assert summary["files_uploaded"] + summary["files_unchanged"] == 300 and summary["files_failed"] == 0
    assert summary["batches_from_checkpoint"] >= 1
    assert read_container(stack["azurite"], container_name) == files
    print(f"\nretry test: {len(landed_first)} blobs before the kill; the retried run uploaded "
          f"{summary['files_uploaded']}, re-sent {len(resent)}, {summary['batches_from_checkpoint']} of "
          f"{summary['batches']} batches from checkpoints")


def run_logs(stack, flow_run_id: str, settle: float = 3.0, timeout: float = 60) -> list:
    """The run's log records as the UI's Logs tab reads them, once no new one has arrived
    for `settle` seconds (the worker's process sends them in the background)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    async def read(client):
        return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                      sort=LogSort.TIMESTAMP_ASC)

    deadline, seen, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        logs = client_call(stack, read)
        if len(logs) != seen:
            seen, stable_since = len(logs), time.monotonic()
        elif time.monotonic() - stable_since >= settle or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


CONFIGURATION_ERRORS = [
    ("backup-site-content/local", "credentials_block", "no-such-block",
     "no Azure Blob Storage Credentials block named 'no-such-block': create it"),
    ("backup-site-content/local", "root_directory", "/no/such/folder",
     "root directory '/no/such/folder' does not exist: check the path"),
    ("verify-backup/local", "prefix", "", "does not exist"),  # verify never creates the container
    ("restore-site-content/local", "target_directory", str(PROJECT / "README.md"), "exists and is not a folder"),
]


def test_a_configuration_error_is_one_error_line_without_traceback(stack):
    # Before: three ERROR records, each with a traceback (the task's, "Encountered exception
    # during execution", "Engine execution exited with unexpected exception"). The four runs
    # go to the worker at once: it runs them side by side.
    import logging

    runs = []
    for deployment, parameter, value, message in CONFIGURATION_ERRORS:
        container = f"t-{uuid.uuid4().hex[:16]}"
        if deployment.startswith("restore"):
            stack["azurite"].container(container).create_container()
            params = {"container": container, parameter: value}
        else:
            params = {"root_directory": str(PROJECT / "sample-site"), "container": container, parameter: value}
        runs.append((deployment, message, start_run(stack, deployment, params)))
    for deployment, message, flow_run_id in runs:
        state = wait_for_state(stack, flow_run_id, {"COMPLETED", "FAILED", "CRASHED"}, 240)
        assert state.is_failed() and message in state.message, (deployment, state)
        logs = run_logs(stack, flow_run_id)
        errors = [log.message for log in logs if log.level >= logging.ERROR]
        assert len(errors) == 1 and message in errors[0], (deployment, errors)
        assert not any("Traceback" in log.message for log in logs), [log.message[:200] for log in logs]


def test_a_deployment_run_cancelled_through_the_api_ends_within_10_s_says_so_once_and_the_next_run_resumes(
        stack, make_tree, container_name):
    # What the UI's Cancel does: the run goes to Cancelling, the worker stops its process.
    # Before: about ten ERROR lines (BatchIncomplete "the run ended first (stopped)", "Crash
    # detected! ... CancelledError"), no summary, the progress artifact left at "(counting)".
    from site_backup.credentials import azurite_connection_string
    from tests.faultproxy import FaultProxy

    files = {f"d{i % 7}/f{i:03d}.txt": f"file {i} ".encode() * (10 + i) for i in range(300)}
    root = make_tree(files)
    params = {"root_directory": str(root), "container": container_name, "files_per_batch": 25, "files_in_flight": 2}
    with FaultProxy(stack["azurite"].port) as proxy:
        proxy.latency = 0.1  # slow enough to cancel the run part-way
        via_proxy = azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")
        job_env = {"env": {"AZURE_STORAGE_CONNECTION_STRING": via_proxy}}

        def start():
            return start_run(stack, "backup-site-content/local", params, job_env)

        flow_run_id = start()
        deadline = time.monotonic() + 180
        while proxy.landed() < 80:
            assert time.monotonic() < deadline, (stack["logs"] / "worker.log").read_text()[-3000:]
            time.sleep(0.05)
        processes = flow_run_processes(flow_run_id)
        assert processes
        cancelled_at = time.monotonic()

        async def cancel(client):  # what `prefect flow-run cancel` and the UI's Cancel send
            from prefect.states import Cancelling

            return await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)

        cancelling = client_call(stack, cancel)
        assert cancelling.status.value == "ACCEPT"
        while any(_alive(pid) for pid in processes):
            assert time.monotonic() - cancelled_at < 60, "the flow run's process is still running"
            time.sleep(0.05)
        took = time.monotonic() - cancelled_at
        state = wait_for_state(stack, flow_run_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, 60)
        assert state.type.value == "CANCELLED", (state, (stack["logs"] / "worker.log").read_text()[-3000:])
        to_cancelled = (state.timestamp - cancelling.state.timestamp).total_seconds()
        assert took < 10, (took, (stack["logs"] / "worker.log").read_text()[-3000:])
        # Prefect's part after the exit: the worker looks at the process every 3 s, loads the
        # flow for its on_cancellation hooks, then writes Cancelled.
        assert to_cancelled < 20, (to_cancelled, (stack["logs"] / "worker.log").read_text()[-3000:])
        proxy.wait_until_idle()  # requests it was forwarding at the cancel have landed
        landed_first = dict(proxy.writes)
        said_stopped(stack, flow_run_id, total=300)
        assert 80 <= len(landed_first) < 300
        proxy.latency = 0

        again = start()
        final = wait_for_state(stack, again, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, 240)
        assert final.is_completed(), (final, (stack["logs"] / "worker.log").read_text()[-3000:])
        summary = flow_run_output(stack, again)
        resent = sorted(name for name, n in proxy.writes.items() if n > 1)

    assert len(resent) <= 4, resent  # at most the files in flight at the cancel
    assert summary["files_uploaded"] + summary["files_unchanged"] == 300 and summary["files_failed"] == 0
    assert summary["files_uploaded"] <= 300 - len(landed_first) + 4
    assert summary["batches_from_checkpoint"] >= 1
    assert read_container(stack["azurite"], container_name) == files
    print(f"\ncancel test: the process gone {took:.1f} s and the run Cancelled {to_cancelled:.1f} s after Cancelling; "
          f"{len(landed_first)} blobs before; the next run uploaded {summary['files_uploaded']}, re-sent "
          f"{len(resent)}, {summary['batches_from_checkpoint']} of {summary['batches']} batches from checkpoints")


def said_stopped(stack, flow_run_id: str, total: int) -> None:
    """The stopped run's log and artifacts, as the UI shows them, say so once (conftest)."""
    assert_said_stopped(run_logs(stack, flow_run_id), run_artifacts(stack, flow_run_id), total)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WebhookReceiver:
    """A webhook endpoint on a free port of 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with receiver.arrived:
                    receiver.bodies.append(body)
                    receiver.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float) -> dict:
        """The first body for which predicate(body) is true, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = next((b for b in self.bodies if predicate(b)), None)
                if found or not self.arrived.wait(max(0.0, deadline - time.monotonic())):
                    assert found, f"no such notification within {timeout} s; got {self.bodies}"
                    return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_make_deploy_creates_alerts_that_notify_on_a_failed_and_on_a_missed_backup(stack, container_name):
    from prefect.events.schemas.automations import Posture

    names = ["backup-site-content failed", "backup-site-content missed"]
    receiver = WebhookReceiver()
    env = dict(stack["env"], ALERT_BLOCK="test-alerts", ALERT_WEBHOOK_URL=receiver.url, ALERT_MISSED_AFTER="10s")
    try:
        deploy = subprocess.run([str(PROJECT / "scripts" / "deploy")], cwd=PROJECT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        assert all(f"automation {name!r} created" in deploy.stdout for name in names), deploy.stdout
        again = subprocess.run([sys.executable, "-m", "site_backup.alerts"], cwd=PROJECT, env=env,
                               capture_output=True, text=True, timeout=120)
        assert all(f"automation {name!r} updated" in again.stdout for name in names), again.stdout + again.stderr

        async def automations(client):
            return {name: await client.read_automations_by_name(name) for name in names}

        made = client_call(stack, automations)
        assert [len(made[name]) for name in names] == [1, 1], made  # a redeploy updates, never duplicates
        failed, missed = made[names[0]][0].trigger, made[names[1]][0].trigger
        assert failed.posture == Posture.Reactive and {"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                                                       "prefect.flow-run.TimedOut",
                                                       "prefect.flow-run.Incomplete"} <= failed.expect
        assert missed.posture == Posture.Proactive and missed.expect == {"prefect.flow-run.Completed"}
        assert missed.within.total_seconds() == 10

        # A backup that fails (its root does not exist): the webhook gets a POST naming the run.
        flow_run_id = start_run(stack, "backup-site-content/local",
                                {"root_directory": "/no/such/folder", "container": container_name})
        run_started = time.monotonic()
        alert = receiver.wait_for(lambda b: flow_run_id in b.get("body", ""), 120)
        assert "ended Failed" in alert["subject"] and "does not exist" in alert["body"], alert
        failed_after = time.monotonic() - run_started
        # No backup completed within the 10 s window: the proactive alert.
        missed_alert = receiver.wait_for(lambda b: b.get("subject", "").startswith("No backup completed"), 90)
        assert "10 seconds" in missed_alert["subject"], missed_alert
        print(f"\nalerts: the failed run's POST {failed_after:.1f} s after it was started; the missed-backup POST "
              f"{time.monotonic() - run_started:.1f} s after (window 10 s)")
    finally:
        async def remove(client):
            for automation in await client.read_automations():
                if automation.name in names:
                    await client.delete_automation(automation.id)

        client_call(stack, remove)  # later tests' runs must not alert a receiver that is gone
        receiver.close()
