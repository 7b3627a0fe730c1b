"""Deployments for real: a Prefect server on a free port, `scripts/deploy` (prefect deploy
from prefect.yaml), a process worker, `prefect deployment run --watch`, a crashed run resumed with
`prefect flow-run retry`, a schedule made through the API that survives a redeploy, and the
sample's HTTP start/status API."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import PROJECT, assert_said_stopped, free_port, read_container, start_process, stop_process, wait_for_port

PREFECT = str(PROJECT / ".venv" / "bin" / "prefect") if (PROJECT / ".venv/bin/prefect").exists() else "prefect"


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON or None) for one request; a body is sent as JSON (the
    API refuses other content types)."""
    headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def stack(azurite, tmp_path_factory):
    """A Prefect server and a process worker, with the repository's deployment deployed."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    server_env = dict(base_env, PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST="127.0.0.1",
                      PREFECT_SERVER_API_PORT=str(port), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    api_url = f"http://127.0.0.1:{port}/api"
    client_env = dict(base_env, PREFECT_API_URL=api_url, PREFECT_HOME=str(tmp_path_factory.mktemp("client-home")),
                      PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path_factory.mktemp("results")),
                      AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string, PWD=str(PROJECT),
                      PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO")
    logs = tmp_path_factory.mktemp("logs")
    server = start_process([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=server_env,
                           stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_for_health(f"{api_url}/health", 240, logs / "server.log")
        deploy = subprocess.run([str(PROJECT / "scripts" / "deploy")], cwd=PROJECT, env=client_env,
                                capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        worker = start_process([PREFECT, "worker", "start", "--pool", "site-backup", "--type", "process"],
                               cwd=PROJECT, env=client_env, stdout=open(logs / "worker.log", "w"),
                               stderr=subprocess.STDOUT)
        yield {"api_url": api_url, "env": client_env, "logs": logs, "azurite": azurite}
    finally:
        if worker:
            stop_process(worker)
        stop_process(server)


def wait_for_health(url: str, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no answer from {url}: " + log.read_text()[-3000:]
        time.sleep(0.5)


def client_call(stack, coro_fn):
    """Run `coro_fn(client)` against the stack's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def run():
        async with get_client() as client:
            return await coro_fn(client)

    with temporary_settings(updates={PREFECT_API_URL: stack["api_url"]}):
        return asyncio.run(run())


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
    from prefect.settings import PREFECT_API_URL, temporary_settings
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
        started = subprocess.run(
            [PREFECT, "deployment", "run", "backup-site-content/local", "--param", f"root_directory={root}",
             "--param", f"container={container_name}", "--param", "files_per_batch=25",
             "--param", "files_in_flight=2",
             "--job-variable", "env=" + json.dumps({"AZURE_STORAGE_CONNECTION_STRING": via_proxy})],
            env=stack["env"], capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

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


@pytest.fixture(scope="module")
def api(stack):
    port = free_port()
    env = dict(stack["env"], API_PORT=str(port))
    proc = start_process([sys.executable, "-m", "site_backup.http_api"], cwd=PROJECT, env=env,
                         stdout=open(stack["logs"] / "api.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def poll_until_finished(status_url: str, timeout: float = 240, headers=None):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        code, head, body = http("GET", status_url, headers=headers)
        seen.append(body["runtimeStatus"])
        if code == 200:
            return body, seen
        assert code == 202 and head.get("retry-after") and head.get("location"), (code, head)
        time.sleep(0.5)
    raise AssertionError(f"not finished after {timeout} s: {seen[-5:]}")


def test_http_start_and_poll_until_completed_with_the_byte_count(api, stack, make_tree, container_name):
    files = {"index.html": b"<html>", "css/site.css": b"body{}" * 100}
    root = make_tree(files)
    code, headers, body = http("POST", f"{api}/api/orchestrators/E2_BackupSiteContent",
                               json.dumps({"root_directory": str(root), "container": container_name}).encode())
    assert code == 202 and headers["location"] == body["statusQueryGetUri"] and body["terminatePostUri"]
    final, seen = poll_until_finished(headers["location"])
    assert final["runtimeStatus"] == "Completed" and final["instanceId"] == body["id"]
    assert final["output"]["bytes_uploaded"] == sum(map(len, files.values()))
    assert final["customStatus"] == {"filesDone": 2, "filesTotal": 2, "bytesDone": 606, "bytesTotal": 606}
    assert final["input"]["root_directory"] == str(root) and final["createdTime"] and final["lastUpdatedTime"]
    assert seen[0] in ("Pending", "Running")
    assert read_container(stack["azurite"], container_name) == files

    async def progress_metadata(client):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        found = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[body["id"]]), key=ArtifactFilterKey(any_=["backup-progress"])))
        return [artifact.metadata_ for artifact in found]

    # customStatus comes from structured counts, not from parsing the description
    assert client_call(stack, progress_metadata) == [
        {"files_done": "2", "files_total": "2", "bytes_done": "606", "bytes_total": "606"}]


def test_http_api_says_where_it_listens(api, stack):
    log = (stack["logs"] / "api.log").read_text()
    assert f"listening on {api}; starts deployment 'backup-site-content/local' on the Prefect server at " \
           f"{stack['api_url']}" in log, log


def test_http_bad_parameters_are_refused_before_a_run_is_created(api, stack):
    async def count_runs(client):
        return len(await client.read_flow_runs())

    runs_before = client_call(stack, count_runs)
    code, _, answer = http("POST", f"{api}/orchestrators/E2_BackupSiteContent",
                           json.dumps({"root_directory": "sample-site", "container": "Bad_Name"}).encode())
    assert code == 400 and answer["error"].startswith("container: invalid container name 'Bad_Name'")
    code, _, answer = http("POST", f"{api}/orchestrators/E2_BackupSiteContent",
                           json.dumps({"root_directory": "sample-site", "files_per_batch": "abc"}).encode())
    assert code == 400 and answer["error"] == "files_per_batch: Input should be a valid integer"
    assert client_call(stack, count_runs) == runs_before


def test_http_refuses_a_web_page_on_another_host(api):
    code, headers, answer = http("POST", f"{api}/orchestrators/E2_BackupSiteContent", b'"/"', headers={
        "Content-Type": "text/plain", "Origin": "http://attacker.example", "Host": "attacker.example"})
    assert code == 421 and "location" not in headers


def test_http_body_as_a_plain_string_like_the_sample(api, stack):
    code, headers, body = http("POST", f"{api}/orchestrators/backup_site_content", json.dumps("sample-site").encode())
    assert code == 202
    final, _ = poll_until_finished(headers["location"])
    assert final["runtimeStatus"] == "Completed" and final["input"]["root_directory"] == "sample-site"


@pytest.mark.parametrize("body,message", [
    (b"not json", "not JSON"),
    (b"42", "JSON int"),
    (b'{"root_directory": "/x", "colour": "red"}', "unknown parameters ['colour']"),
    (b'{"container": "x"}', "root_directory is missing"),
    (b"", "empty body"),
])
def test_http_bad_requests_get_400_with_a_message(api, body, message):
    code, _, answer = http("POST", f"{api}/orchestrators/E2_BackupSiteContent", body)
    assert code == 400 and message in answer["error"]


def test_http_unknown_function_and_instance_get_404(api):
    assert http("POST", f"{api}/orchestrators/E3_Other", b'"x"')[0] == 404
    assert http("GET", f"{api}/instances/00000000-0000-0000-0000-000000000000")[0] == 404
    assert http("GET", f"{api}/instances/not-a-uuid")[0] == 404


def test_http_terminate_cancels_the_run(api, stack, tmp_path, container_name):
    root = tmp_path / "many"
    for i in range(1500):
        (root / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 10}" / f"f{i}.txt").write_bytes(b"x" * 100)
    code, headers, body = http("POST", f"{api}/orchestrators/E2_BackupSiteContent", json.dumps(
        {"root_directory": str(root), "container": container_name, "files_in_flight": 1}).encode())
    assert code == 202
    deadline = time.monotonic() + 120
    while http("GET", body["statusQueryGetUri"])[2]["runtimeStatus"] == "Pending":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert http("POST", body["terminatePostUri"])[0] == 202
    final, _ = poll_until_finished(body["statusQueryGetUri"], timeout=120)
    assert final["runtimeStatus"] == "Terminated"
    assert http("POST", body["terminatePostUri"])[0] == 410


def test_http_api_key_is_required_off_loopback(stack):
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "site_backup.http_api"], cwd=PROJECT, capture_output=True,
                             text=True, timeout=60, env=dict(stack["env"], API_HOST="0.0.0.0", API_PORT=str(port)))
    assert refused.returncode == 2 and "set API_KEY" in refused.stderr

    env = dict(stack["env"], API_PORT=str(port), API_KEY="s3cret-key")
    proc = start_process([sys.executable, "-m", "site_backup.http_api"], cwd=PROJECT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60)
        url = f"http://127.0.0.1:{port}/instances/00000000-0000-0000-0000-000000000000"
        assert http("GET", url)[0] == 401
        assert http("GET", url, headers={"x-functions-key": "wrong"})[0] == 401
        assert http("GET", url, headers={"x-functions-key": "s3cret-key"})[0] == 404
        code, _, body = http("GET", url + "?code=s3cret-key")
        assert code == 404 and "s3cret" not in json.dumps(body)
    finally:
        stop_process(proc)


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


@pytest.mark.parametrize("deployment,parameter,value,message", [
    ("backup-site-content/local", "credentials_block", "no-such-block",
     "no Azure Blob Storage Credentials block named 'no-such-block': create it"),
    ("backup-site-content/local", "root_directory", "/no/such/folder",
     "root directory '/no/such/folder' does not exist: check the path"),
    ("verify-backup/local", "prefix", "", "does not exist"),  # verify never creates the container
    ("restore-site-content/local", "target_directory", str(PROJECT / "README.md"), "exists and is not a folder"),
])
def test_a_configuration_error_is_one_error_line_without_traceback(stack, container_name, deployment, parameter, value,
                                                                   message):
    # Before: three ERROR records, each with a traceback (the task's, "Encountered exception
    # during execution", "Engine execution exited with unexpected exception").
    import logging

    if deployment.startswith("restore"):
        stack["azurite"].container(container_name).create_container()
        params = {"container": container_name, parameter: value}
    else:
        params = {"root_directory": str(PROJECT / "sample-site"), "container": container_name, parameter: value}
    started = subprocess.run(
        [PREFECT, "deployment", "run", deployment, "--watch", "--watch-timeout", "240",
         *[arg for k, v in params.items() for arg in ("--param", f"{k}={v}")]],
        env=stack["env"], capture_output=True, text=True, timeout=300)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
    state = wait_for_state(stack, flow_run_id, {"COMPLETED", "FAILED", "CRASHED"}, 240)
    assert state.is_failed() and message in state.message, state
    logs = run_logs(stack, flow_run_id)
    errors = [log.message for log in logs if log.level >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors
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
    params = ["--param", f"root_directory={root}", "--param", f"container={container_name}",
              "--param", "files_per_batch=25", "--param", "files_in_flight=2"]
    with FaultProxy(stack["azurite"].port) as proxy:
        proxy.latency = 0.1  # slow enough to cancel the run part-way
        via_proxy = azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")
        job_env = ["--job-variable", "env=" + json.dumps({"AZURE_STORAGE_CONNECTION_STRING": via_proxy})]

        def start():
            started = subprocess.run([PREFECT, "deployment", "run", "backup-site-content/local", *params, *job_env],
                                     env=stack["env"], capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
            return re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

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


def run_artifacts(stack, flow_run_id: str) -> dict:
    """The run's artifacts by key, as the UI's Artifacts tab shows them."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client):
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return {a.key: a for a in client_call(stack, read)}


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
        started = subprocess.run(
            [PREFECT, "deployment", "run", "backup-site-content/local", "--param", "root_directory=/no/such/folder",
             "--param", f"container={container_name}"], env=stack["env"], capture_output=True, text=True, timeout=120)
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
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
