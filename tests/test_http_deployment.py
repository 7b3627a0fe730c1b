"""The sample's HTTP start/status API and the Durable Functions client over a real Prefect
server and process worker (the session's `stack`, which test_deployment.py uses too)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import PROJECT, free_port, read_container, start_process, stop_process, wait_for_port
from tests.deployment_stack import client_call, http


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


def test_http_api_key_is_required_off_loopback(stack, df_loop):
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
        # The Durable Functions client sends the key from its rpcBaseUrl (HTTP Basic).
        from azure.durable_functions import DurableOrchestrationClient

        keyed = DurableOrchestrationClient(df_binding(f"http://127.0.0.1:{port}", key="s3cret-key"))
        assert not df_loop(keyed.get_status("no-such-id"))  # 404, not 401
        with pytest.raises(Exception, match="status code 401"):
            df_loop(DurableOrchestrationClient(df_binding(f"http://127.0.0.1:{port}")).get_status("no-such-id"))
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def df_loop():
    """One event loop for every Durable Functions client call: the client keeps one aiohttp
    session for the process, tied to the loop it was made on."""
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(300)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def df_binding(api: str, key: str = "") -> str:
    """The binding JSON a user passes to DurableOrchestrationClient (docs/http-api.md)."""
    rpc = api.replace("http://", f"http://key:{key}@" if key else "http://") + "/runtime/webhooks/durabletask/"
    instance = f"{api}/runtime/webhooks/durabletask/instances/INSTANCEID"
    return json.dumps({
        "taskHubName": "site-backup", "rpcBaseUrl": rpc,
        "creationUrls": {
            "createNewInstancePostUri": f"{api}/runtime/webhooks/durabletask/orchestrators/{{functionName}}[/{{instanceId}}]",
            "createAndWaitOnNewInstancePostUri": f"{api}/runtime/webhooks/durabletask/orchestrators/{{functionName}}[/{{instanceId}}]"},
        "managementUrls": {
            "id": "INSTANCEID", "statusQueryGetUri": instance, "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}",
            "terminatePostUri": f"{instance}/terminate?reason={{text}}", "rewindPostUri": f"{instance}/rewind?reason={{text}}",
            "purgeHistoryDeleteUri": instance, "restartPostUri": f"{instance}/restart",
            "suspendPostUri": f"{instance}/suspend?reason={{text}}", "resumePostUri": f"{instance}/resume?reason={{text}}"}})


def test_durable_functions_client_runs_restarts_lists_and_purges_backups(api, stack, df_loop, make_tree, container_name):
    """azure-functions-durable's own client, unchanged, against `make api` over a real Prefect
    server and worker."""
    import azure.functions as func
    from azure.durable_functions import DurableOrchestrationClient, OrchestrationRuntimeStatus

    files = {"index.html": b"<html>", "img/logo.png": b"\x89PNG" * 50}
    root = make_tree(files)
    client = DurableOrchestrationClient(df_binding(api))
    request = func.HttpRequest(method="POST", url=f"{api}/api/start", body=b"")
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    instance = f"nightly-{container_name}"
    params = {"root_directory": str(root), "container": container_name}

    assert df_loop(client.start_new("E2_BackupSiteContent", instance, params)) == instance
    with pytest.raises(Exception, match="is taken by a run"):
        df_loop(client.start_new("E2_BackupSiteContent", instance, params))
    done = df_loop(client.wait_for_completion_or_create_check_status_response(request, instance, 240_000, 500))
    assert done.status_code == 200 and json.loads(done.get_body())["bytes_uploaded"] == sum(map(len, files.values()))

    status = df_loop(client.get_status(instance, show_history=True, show_history_output=True, show_input=True))
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed and status.instance_id == instance
    assert status.name == "E2_BackupSiteContent" and status.input_["root_directory"] == str(root)
    assert status.output["bytes_uploaded"] == 206 and status.custom_status["filesDone"] == 2
    assert status.created_time and status.last_updated_time >= status.created_time
    events = [event["EventType"] for event in status.history]
    assert events[0] == "ExecutionStarted" and events[-1] == "ExecutionCompleted" and "TaskCompleted" in events
    assert status.history[-1]["Result"]["bytes_uploaded"] == 206
    assert read_container(stack["azurite"], container_name) == files

    # Every management URL of the check-status answer works.
    check = client.create_check_status_response(request, instance)
    urls = json.loads(check.get_body())
    assert check.status_code == 202 and check.headers["Location"] == urls["statusQueryGetUri"]
    assert http("GET", urls["statusQueryGetUri"])[2]["runtimeStatus"] == "Completed"
    assert http("POST", urls["sendEventPostUri"].replace("{eventName}", "Approve"), b"{}")[0] == 501
    for name in ("terminatePostUri", "rewindPostUri", "suspendPostUri", "resumePostUri"):
        assert http("POST", urls[name].replace("{text}", "why"))[0] == 410, name  # already finished

    # Restart in place (Prefect's retry of the same flow run), then under a new id.
    assert df_loop(client.restart(instance, restart_with_new_instance_id=False)) == instance
    again = df_loop(client.wait_for_completion_or_create_check_status_response(request, instance, 240_000, 500))
    assert again.status_code == 200 and json.loads(again.get_body())["files_unchanged"] == 2
    fresh = df_loop(client.restart(instance))
    assert fresh != instance
    assert df_loop(client.wait_for_completion_or_create_check_status_response(request, fresh, 240_000, 500)).status_code == 200
    sample = df_loop(client.start_new("E2_BackupSiteContent", None, "sample-site"))  # the sample's input: a path
    assert df_loop(client.wait_for_completion_or_create_check_status_response(request, sample, 240_000, 500)).status_code == 200
    assert df_loop(client.get_status(sample)).input_["root_directory"] == "sample-site"

    ours = {instance, fresh, sample}
    listed = {s.instance_id: s for s in df_loop(client.get_status_by(created_time_from=since,
                                                                    runtime_status=[OrchestrationRuntimeStatus.Completed]))}
    assert set(listed) == ours and all(s.runtime_status == OrchestrationRuntimeStatus.Completed for s in listed.values())
    assert ours <= {s.instance_id for s in df_loop(client.get_status_all())}
    assert not df_loop(client.get_status_by(created_time_from=since, runtime_status=[OrchestrationRuntimeStatus.Running]))
    # Pages of one, as a client that pages follows x-ms-continuation-token.
    query = f"{api}/runtime/webhooks/durabletask/instances/?top=1&createdTimeFrom={since.isoformat().replace('+00:00', 'Z')}"
    paged, token = [], None
    while True:
        code, head, page = http("GET", query, headers={"x-ms-continuation-token": token} if token else None)
        assert code == 200 and len(page) == 1, (code, page)
        paged.append(page[0]["instanceId"])
        token = head.get("x-ms-continuation-token")
        if not token:
            break
    assert sorted(paged) == sorted(ours)

    assert http("DELETE", urls["purgeHistoryDeleteUri"])[2] == {"instancesDeleted": 1}
    assert not df_loop(client.get_status(instance))  # gone: 404
    purged = df_loop(client.purge_instance_history_by(created_time_from=since))
    assert purged.instances_deleted == 2 and not df_loop(client.get_status(sample))
    assert df_loop(client.purge_instance_history(sample)).instances_deleted == 0
    assert read_container(stack["azurite"], container_name) == files  # purging never touches a backup
    # The id is free again once purged.
    assert df_loop(client.start_new("E2_BackupSiteContent", instance, params)) == instance
    assert df_loop(client.wait_for_completion_or_create_check_status_response(request, instance, 240_000, 500)).status_code == 200


def test_durable_functions_client_terminates_a_running_backup_and_refuses_suspend_and_events(
        api, df_loop, tmp_path, container_name):
    from azure.durable_functions import DurableOrchestrationClient, OrchestrationRuntimeStatus

    root = tmp_path / "many"
    for i in range(1500):
        (root / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 10}" / f"f{i}.txt").write_bytes(b"x" * 100)
    client = DurableOrchestrationClient(df_binding(api))
    instance = df_loop(client.start_new("E2_BackupSiteContent", None, {
        "root_directory": str(root), "container": container_name, "files_in_flight": 1}))
    deadline = time.monotonic() + 120
    while df_loop(client.get_status(instance)).runtime_status != OrchestrationRuntimeStatus.Running:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(Exception, match="status code 501"):
        df_loop(client.suspend(instance, "maintenance"))
    with pytest.raises(Exception, match="status code 501"):
        df_loop(client.raise_event(instance, "Approve", {"ok": True}))
    code, _, answer = http("POST", f"{api}/runtime/webhooks/durabletask/instances/{instance}/suspend")
    assert code == 501 and "Terminate it instead" in answer["ExceptionMessage"]
    df_loop(client.resume(instance, "nothing to resume"))  # not suspended: nothing to do
    with pytest.raises(Exception, match="status code 409"):  # purging a running backup is refused
        df_loop(client.purge_instance_history(instance))
    df_loop(client.terminate(instance, "maintenance window"))
    while (status := df_loop(client.get_status(instance))).runtime_status != OrchestrationRuntimeStatus.Terminated:
        assert time.monotonic() < deadline + 120, status.runtime_status
        time.sleep(0.5)
    df_loop(client.terminate(instance, "again"))  # 410: already finished, not an error
    with pytest.raises(Exception, match="No instance with ID 'no-such-id' found"):
        df_loop(client.terminate("no-such-id", "x"))
    assert df_loop(client.purge_instance_history(instance)).instances_deleted == 1


