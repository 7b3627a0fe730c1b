"""Durable Functions' instance management API over Prefect flow runs: the routes that
`azure-functions-durable`'s DurableOrchestrationClient calls under its `rpcBaseUrl`
(`http://HOST:PORT/runtime/webhooks/durabletask/`), so code written for the sample drives
backups unchanged. An instance is a flow run of the backup deployment; its id is the flow
run's id, or the id the caller chose, kept as the run's name and tag `instance:ID`.
Purging deletes flow runs (Prefect's record of a run), never a backup's blobs."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from site_backup.api_runs import (FINISHED, FUNCTION_NAMES, RUNTIME_STATUS, TAG, ApiError, check_content_type, instance_id_of, parse_start_body,
                                  prefect_client, read_body, status_body, status_response, _output)

PREFIX = "/runtime/webhooks/durabletask"
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")
PAGE = 200  # the Prefect server's largest page
# runtimeStatus values a query may name, as the Prefect state types they cover
STATE_TYPES: dict[str, set[str]] = {"Canceled": set(), "ContinuedAsNew": set()}
for _type, _status in RUNTIME_STATUS.items():
    STATE_TYPES.setdefault(_status, set()).add(_type)
_start_lock = asyncio.Lock()


def check_instance_id(value: str) -> str:
    """A caller-chosen instance id, or ApiError (400) saying what an id may hold."""
    if not INSTANCE_ID.fullmatch(value):
        raise ApiError(400, f"instance id {value[:120]!r} is not valid: use 1-100 letters, digits and . _ : @ -, "
                            f"starting with a letter or digit (or leave it out for a generated one)")
    return value


async def find_run(instance_id: str):
    """The flow run an instance id names (a chosen id first, then a flow run id), or None."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.exceptions import ObjectNotFound

    if not INSTANCE_ID.fullmatch(instance_id):
        return None
    async with prefect_client() as client:
        tagged = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[TAG + instance_id])), limit=1)
        if tagged:
            return tagged[0]
        try:
            return await client.read_flow_run(UUID(instance_id))
        except (ValueError, ObjectNotFound):
            return None


async def create_run(deployment_name: str, parameters: dict[str, Any], instance_id: str | None = None):
    """A new flow run of the deployment; with `instance_id`, named and tagged with it,
    refused (409) while any run holds that id."""
    async with _start_lock, prefect_client() as client:
        deployment = await read_deployment(client, deployment_name)
        if instance_id is None:
            return await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        existing = await find_run(instance_id)
        if existing is not None:
            raise ApiError(409, f"instance id {instance_id!r} is taken by a run that is {_runtime(existing)}: purge "
                                f"it first (purge_instance_history) to reuse the id, or choose another")
        # The idempotency key makes the server itself refuse a second run with this id
        # (another API process): it answers with the first run.
        return await client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, name=instance_id, tags=[TAG + instance_id],
            idempotency_key=TAG + instance_id)


async def read_deployment(client, deployment_name: str):
    """The deployment, or ApiError (503) with the fix."""
    from prefect.exceptions import ObjectNotFound

    try:
        return await client.read_deployment_by_name(deployment_name)
    except ObjectNotFound:
        raise ApiError(503, f"deployment {deployment_name!r} not found on the Prefect server: run "
                            f"`make deploy` (or set SITE_BACKUP_DEPLOYMENT)") from None


def management_urls(url, request: Request, instance_id: str) -> dict[str, str]:
    """The instance's management URLs, as Durable Functions lists them (placeholders kept)."""
    base = url(request, f"{PREFIX}/instances/{instance_id}")
    return {"id": instance_id, "statusQueryGetUri": base, "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}",
            "terminatePostUri": f"{base}/terminate?reason={{text}}", "rewindPostUri": f"{base}/rewind?reason={{text}}",
            "purgeHistoryDeleteUri": base, "restartPostUri": f"{base}/restart",
            "suspendPostUri": f"{base}/suspend?reason={{text}}", "resumePostUri": f"{base}/resume?reason={{text}}"}


def unwrap_input(raw: bytes) -> bytes:
    """The Python client encodes its input twice (its own json.dumps, then aiohttp's
    `json=`): a JSON string holding a JSON string or object is taken as that inner value."""
    try:
        outer = json.loads(raw)
        inner = json.loads(outer) if isinstance(outer, str) else None
    except (ValueError, RecursionError):
        return raw
    return outer.encode() if isinstance(inner, (str, dict)) else raw


def basic_password(header: str | None) -> str:
    """The password of HTTP Basic credentials: the Durable Functions client sends the key
    this way when its rpcBaseUrl carries it (http://key:KEY@host:port/...)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


def error_response(request: Request, exc: ApiError) -> JSONResponse:
    """The error as JSON; on the Durable Functions routes also as `ExceptionMessage`, the
    field their Python client raises with."""
    body = {"error": exc.message}
    if request.url.path.startswith(PREFIX + "/"):
        body["ExceptionMessage"] = exc.message
    return JSONResponse(body, status_code=exc.status)


def parse_time(name: str, value: str | None) -> datetime | None:
    """A createdTimeFrom/To query value, or ApiError (400)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "+"))  # an unencoded '+' arrives as ' '
    except ValueError:
        raise ApiError(400, f"{name}={value!r} is not a time: give ISO 8601, e.g. 2026-12-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise ApiError(400, f"{name}={value!r} has no time zone: end it with Z or an offset")
    return parsed


def parse_statuses(value: str | None) -> set[str] | None:
    """The Prefect state types a runtimeStatus query (comma-separated) covers, or None for all."""
    if not value:
        return None
    types = set()
    for name in filter(None, (part.strip() for part in value.split(","))):
        if name not in STATE_TYPES:
            raise ApiError(400, f"runtimeStatus {name!r} is unknown: use {', '.join(sorted(STATE_TYPES))}")
        types |= STATE_TYPES[name]
    return types


async def matching_runs(deployment_name: str, query, wanted: int | None = None) -> list:
    """The deployment's runs that a list or purge query selects, oldest first; at most
    `wanted` of them. Creation times are compared here: Prefect filters by expected start
    time, which is never earlier than creation, so only the lower bound goes to the server."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId,
                                                FlowRunFilterExpectedStartTime, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.sorting import FlowRunSort

    low, high = parse_time("createdTimeFrom", query.get("createdTimeFrom")), parse_time(
        "createdTimeTo", query.get("createdTimeTo"))
    types, prefix = parse_statuses(query.get("runtimeStatus")), query.get("instanceIdPrefix") or ""
    if types is not None and not types:
        return []
    async with prefect_client() as client:
        deployment = await read_deployment(client, deployment_name)
        run_filter = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=sorted(types))) if types else None,
            expected_start_time=FlowRunFilterExpectedStartTime(after_=low) if low else None)
        found, offset = [], 0
        while wanted is None or len(found) < wanted:
            page = await client.read_flow_runs(flow_run_filter=run_filter, sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                                               limit=PAGE, offset=offset)
            found += [run for run in page if (low is None or run.created >= low) and (high is None or run.created <= high)
                      and instance_id_of(run).startswith(prefix)]
            offset += PAGE
            if len(page) < PAGE:
                break
    return found if wanted is None else found[:wanted]


async def history(run, with_output: bool) -> list[dict[str, Any]]:
    """The run as Durable Functions history events: started, one event per task run, ended."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async with prefect_client() as client:
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                                            sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=PAGE)
    events = [{"EventType": "ExecutionStarted", "FunctionName": "E2_BackupSiteContent",
               "Timestamp": _iso(run.start_time or run.created)}]
    for task in tasks:
        failed = task.state_type is not None and task.state_type.value in ("FAILED", "CRASHED")
        events.append({"EventType": "TaskFailed" if failed else "TaskCompleted", "FunctionName": task.name,
                       "ScheduledTime": _iso(task.start_time), "Timestamp": _iso(task.end_time or task.updated)})
    runtime = _runtime(run)
    if runtime in FINISHED:
        end = {"EventType": "ExecutionTerminated" if runtime == "Terminated" else "ExecutionCompleted",
               "OrchestrationStatus": runtime, "Timestamp": _iso(run.end_time or run.updated)}
        if with_output:
            end["Result"] = await _output(run)
        events.append(end)
    return events


def add_routes(app: FastAPI, deployment_name: str, url) -> None:
    """The Durable Functions routes under /runtime/webhooks/durabletask (terminate is
    shared with the sample's routes in http_api)."""

    async def the_run(instance_id: str):
        run = await find_run(instance_id)
        if run is None:
            raise ApiError(404, f"no instance {instance_id!r}")
        return run

    async def set_state(run, state) -> None:
        async with prefect_client() as client:
            await client.set_flow_run_state(run.id, state, force=True)

    @app.post(PREFIX + "/orchestrators/{function_name}")
    @app.post(PREFIX + "/orchestrators/{function_name}/{instance_id}")
    async def start(function_name: str, request: Request, instance_id: str | None = None):

        if function_name not in FUNCTION_NAMES:
            raise ApiError(404, f"unknown function {function_name!r}: use one of {sorted(FUNCTION_NAMES)}")
        if instance_id is not None:
            check_instance_id(instance_id)
        raw = await read_body(request)
        if not raw.strip():
            raise ApiError(400, "no input: pass the root directory (a string) or an object of parameters as "
                                "client_input")
        check_content_type(request.headers.get("content-type"))
        run = await create_run(deployment_name, parse_start_body(unwrap_input(raw)), instance_id)
        body = management_urls(url, request, instance_id_of(run))
        return JSONResponse(body, status_code=202, headers={"Location": body["statusQueryGetUri"]})

    @app.get(PREFIX + "/instances/{instance_id}")
    async def status(instance_id: str, request: Request, showInput: str = "true", showHistory: str = "false",
                     showHistoryOutput: str = "false"):
        run = await the_run(instance_id)
        body = await status_body(run)
        if showInput.lower() == "false":
            body["input"] = None
        if showHistory.lower() == "true":
            body["history"] = await history(run, showHistoryOutput.lower() == "true")
        return status_response(body, url(request, request.url.path))

    @app.get(PREFIX + "/instances")
    @app.get(PREFIX + "/instances/")
    async def list_instances(request: Request, top: str | None = None, showInput: str = "true"):
        start = request.headers.get("x-ms-continuation-token") or "0"
        if not start.isdigit() or (top is not None and not (top.isdigit() and 0 < int(top) <= 1000)):
            raise ApiError(400, "top must be a whole number from 1 to 1000 and x-ms-continuation-token the value a "
                                "previous page's answer carried")
        # Without `top`, every match in one answer: the Python client reads one page only.
        wanted = int(start) + int(top) + 1 if top else None
        runs = (await matching_runs(deployment_name, request.query_params, wanted))[int(start):]
        page = runs[:int(top)] if top else runs
        bodies = [await status_body(run) for run in page]
        if showInput.lower() == "false":
            for body in bodies:
                body["input"] = None
        more = {"x-ms-continuation-token": str(int(start) + len(page))} if len(runs) > len(page) else {}
        return JSONResponse(bodies, status_code=200, headers=more)

    @app.delete(PREFIX + "/instances/{instance_id}")
    async def purge(instance_id: str):
        run = await the_run(instance_id)
        if _runtime(run) not in FINISHED:
            raise ApiError(409, f"instance {instance_id!r} is {_runtime(run)}: terminate it first; purging deletes "
                                f"only the record of a finished run")
        async with prefect_client() as client:
            await client.delete_flow_run(run.id)
        return JSONResponse({"instancesDeleted": 1}, status_code=200)

    @app.delete(PREFIX + "/instances")
    @app.delete(PREFIX + "/instances/")
    async def purge_by(request: Request):
        if not request.query_params.get("createdTimeFrom"):
            raise ApiError(400, "createdTimeFrom is required: purging every run at once is refused")
        finished = {status for status in ("Completed", "Failed", "Terminated")
                    if status in (request.query_params.get("runtimeStatus") or "Completed,Failed,Terminated")}
        query = {**request.query_params, "runtimeStatus": ",".join(sorted(finished))}
        parse_statuses(request.query_params.get("runtimeStatus"))  # an unknown name is still an error
        runs = await matching_runs(deployment_name, query) if finished else []
        async with prefect_client() as client:
            for run in runs:
                await client.delete_flow_run(run.id)
        return JSONResponse({"instancesDeleted": len(runs)}, status_code=200 if runs else 404)

    @app.post(PREFIX + "/instances/{instance_id}/restart")
    async def restart(instance_id: str, restartWithNewInstanceId: str = "true"):
        from prefect.states import Scheduled

        run = await the_run(instance_id)
        if _runtime(run) not in FINISHED:
            raise ApiError(409, f"instance {instance_id!r} is {_runtime(run)}: terminate it first, or wait")
        if restartWithNewInstanceId.lower() == "false":
            # Prefect's retry: the same flow run runs again and resumes from its checkpoints.
            await set_state(run, Scheduled(message="restarted over HTTP"))
            return JSONResponse(instance_id_of(run), status_code=202)
        new = await create_run(deployment_name, run.parameters)
        return JSONResponse(str(new.id), status_code=202)

    @app.post(PREFIX + "/instances/{instance_id}/rewind")
    async def rewind(instance_id: str, reason: str = ""):
        from prefect.states import Scheduled

        run = await the_run(instance_id)
        if _runtime(run) != "Failed":
            return JSONResponse({"error": "only a failed instance can be rewound"}, status_code=410)
        await set_state(run, Scheduled(message=f"rewound over HTTP {reason}".strip()[:500]))
        return JSONResponse(None, status_code=202)

    @app.post(PREFIX + "/instances/{instance_id}/suspend")
    async def suspend(instance_id: str):
        run = await the_run(instance_id)
        if _runtime(run) in FINISHED:
            return JSONResponse({"error": "the instance already finished"}, status_code=410)
        raise ApiError(501, "a backup cannot be suspended from outside: Prefect pauses a flow run only from inside "
                            "the flow. Terminate it instead: the next run (restart) resumes from its checkpoints")

    @app.post(PREFIX + "/instances/{instance_id}/resume")
    async def resume(instance_id: str):
        run = await the_run(instance_id)
        runtime = _runtime(run)
        if runtime in FINISHED:
            return JSONResponse({"error": "the instance already finished"}, status_code=410)
        if runtime == "Suspended":  # paused from inside the flow or in Prefect's UI
            async with prefect_client() as client:
                await client.resume_flow_run(run.id)
        return JSONResponse(None, status_code=202)

    @app.post(PREFIX + "/instances/{instance_id}/raiseEvent/{event_name}")
    async def raise_event(instance_id: str, event_name: str):
        await the_run(instance_id)
        raise ApiError(501, f"event {event_name[:100]!r} refused: a backup waits for no event. Use terminate to stop "
                            f"it, or start a new instance with other parameters")


def _runtime(run) -> str:
    return RUNTIME_STATUS.get(run.state_type.value if run.state_type else "PENDING", "Pending")


def _iso(value) -> str | None:
    return value.isoformat() if value else None
