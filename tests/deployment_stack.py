"""A Prefect server on a free port with the repository's deployments (scripts/deploy) and a
process worker: the session's `stack` fixture (tests/conftest.py), shared by the modules that
run deployments (one xdist group, so one process starts it once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

from tests.conftest import PROJECT, free_port, start_process, stop_process

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


@contextlib.contextmanager
def deployment_stack(azurite, tmp_path_factory, home):
    """A Prefect server (PREFECT_HOME `home`, tests/conftest.py server_home) and a process
    worker, with the repository's deployments deployed."""
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


def start_run(stack, deployment: str, parameters: dict, job_variables: dict | None = None) -> str:
    """Start a run of `deployment` ("flow/name") through the API, as `prefect deployment run`
    does (test_deployment.py runs that command itself once), without a Prefect import per
    run; returns the flow run's id."""
    async def create(client):
        found = await client.read_deployment_by_name(deployment)
        return await client.create_flow_run_from_deployment(found.id, parameters=parameters,
                                                            job_variables=job_variables)

    return str(client_call(stack, create).id)


def run_artifacts(stack, flow_run_id: str) -> dict:
    """The flow run's artifacts by key, as the UI's Artifacts tab shows them."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client):
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return {a.key: a for a in client_call(stack, read)}
