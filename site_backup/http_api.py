"""The Durable Functions sample's HTTP contract over Prefect: start a backup with
`POST /orchestrators/{name}`, poll `GET /instances/{id}` until Completed, terminate.

Run with `make api` or `python -m site_backup.http_api`. Settings (environment):
API_HOST (default 127.0.0.1), API_PORT (7071), API_KEY (required when API_HOST is not a
loopback address), SITE_BACKUP_DEPLOYMENT (default backup-site-content/local),
PREFECT_API_URL (the Prefect server)."""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import os
import re
import sys
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

FUNCTION_NAMES = {"backup_site_content", "backup-site-content", "E2_BackupSiteContent"}
RETRY_AFTER_SECONDS = 2

# Prefect state types, as Durable Functions' runtimeStatus.
RUNTIME_STATUS = {
    "SCHEDULED": "Pending",
    "PENDING": "Pending",
    "RUNNING": "Running",
    "COMPLETED": "Completed",
    "FAILED": "Failed",
    "CRASHED": "Failed",
    "CANCELLING": "Running",
    "CANCELLED": "Terminated",
    "PAUSED": "Suspended",
}
FINISHED = {"Completed", "Failed", "Terminated"}

_PROGRESS = re.compile(r"(\d+)/(\d+) files, (\d+)/(\d+) bytes")


def backup_parameters() -> set[str]:
    """The backup flow's parameter names (what a request body may set)."""
    from flows.backup_site_content import backup_site_content

    return set(inspect.signature(backup_site_content.fn).parameters)


def parse_start_body(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    """The flow parameters from a start request: a JSON string (the root directory, as in
    the sample) or a JSON object of parameters. ValueError says what is wrong."""
    if not raw.strip():
        raise ValueError("empty body: send the root directory as a JSON string, e.g. \"D:/home/site\"")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("body is not JSON: send the root directory as a JSON string or an object of parameters")
    if isinstance(body, str):
        body = {"root_directory": body}
    if not isinstance(body, dict):
        raise ValueError(f"body is a JSON {type(body).__name__}: send a string (root directory) or an object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValueError(f"unknown parameters {unknown}: allowed are {sorted(allowed)}")
    if not isinstance(body.get("root_directory"), str) or not body["root_directory"]:
        raise ValueError("root_directory is missing or not a string")
    return body


def custom_status(description: str | None) -> dict[str, int] | None:
    """Live progress from the run's progress artifact."""
    match = _PROGRESS.search(description or "")
    if not match:
        return None
    files_done, files_total, bytes_done, bytes_total = map(int, match.groups())
    return {"filesDone": files_done, "filesTotal": files_total, "bytesDone": bytes_done, "bytesTotal": bytes_total}


def create_app(api_key: str | None = None, deployment: str | None = None) -> FastAPI:
    """The ASGI application. With `api_key`, every request must carry it."""
    deployment_name = deployment or os.environ.get("SITE_BACKUP_DEPLOYMENT", "backup-site-content/local")
    app = FastAPI(title="site-backup orchestration API", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key:
            given = request.headers.get("x-functions-key") or request.query_params.get("code") or ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return JSONResponse({"error": "missing or wrong API key: send it as x-functions-key or ?code="},
                                    status_code=401)
        return await call_next(request)

    def urls(request: Request, run_id: str) -> dict[str, str]:
        # Unlike Durable Functions, the key is never echoed back in these URLs.
        base = str(request.base_url).rstrip("/")
        return {
            "id": run_id,
            "statusQueryGetUri": f"{base}/instances/{run_id}",
            "terminatePostUri": f"{base}/instances/{run_id}/terminate",
        }

    @app.post("/orchestrators/{function_name}")
    @app.post("/api/orchestrators/{function_name}")
    async def start(function_name: str, request: Request):
        if function_name not in FUNCTION_NAMES:
            return JSONResponse({"error": f"unknown function {function_name!r}: use one of {sorted(FUNCTION_NAMES)}"},
                                status_code=404)
        try:
            parameters = parse_start_body(await request.body(), backup_parameters())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            try:
                dep = await client.read_deployment_by_name(deployment_name)
            except Exception:
                return JSONResponse(
                    {"error": f"deployment {deployment_name!r} not found on the Prefect server: run `make deploy`"},
                    status_code=503,
                )
            run = await client.create_flow_run_from_deployment(dep.id, parameters=parameters)
        body = urls(request, str(run.id))
        return JSONResponse(body, status_code=202, headers={"Location": body["statusQueryGetUri"]})

    @app.get("/instances/{instance_id}")
    @app.get("/runtime/webhooks/durabletask/instances/{instance_id}")
    async def status(instance_id: str, request: Request):
        run = await _read_run(instance_id)
        if run is None:
            return JSONResponse({"error": f"no instance {instance_id!r}"}, status_code=404)
        runtime = RUNTIME_STATUS.get(run.state_type.value if run.state_type else "PENDING", "Pending")
        body = {
            "name": "E2_BackupSiteContent",
            "instanceId": str(run.id),
            "runtimeStatus": runtime,
            "input": run.parameters,
            "customStatus": await _progress(run.id),
            "output": await _output(run) if runtime in ("Completed", "Failed") else None,
            "createdTime": _iso(run.created),
            "lastUpdatedTime": _iso(run.updated),
        }
        if runtime in FINISHED:
            return JSONResponse(body, status_code=200)
        return JSONResponse(body, status_code=202, headers={"Location": str(request.url),
                                                            "Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.post("/instances/{instance_id}/terminate")
    @app.post("/runtime/webhooks/durabletask/instances/{instance_id}/terminate")
    async def terminate(instance_id: str):
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        run = await _read_run(instance_id)
        if run is None:
            return JSONResponse({"error": f"no instance {instance_id!r}"}, status_code=404)
        if RUNTIME_STATUS.get(run.state_type.value if run.state_type else "", "") in FINISHED:
            return JSONResponse({"error": "the instance already finished"}, status_code=410)
        async with get_client() as client:
            await client.set_flow_run_state(run.id, Cancelling(message="terminated over HTTP"), force=True)
        return JSONResponse(None, status_code=202)

    return app


async def _read_run(instance_id: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(instance_id)
    except ValueError:
        return None
    async with get_client() as client:
        try:
            return await client.read_flow_run(run_id)
        except ObjectNotFound:
            return None


async def _progress(run_id) -> dict[str, int] | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                                           key=ArtifactFilterKey(any_=["backup-progress"])),
            limit=1,
        )
    return custom_status(artifacts[0].description) if artifacts else None


async def _output(run) -> Any:
    """The flow's result (the summary) for a finished run; for a failed one, its message."""
    if run.state is None:
        return None
    if run.state.type.value != "COMPLETED":
        return {"error": run.state.message}
    try:
        result = await run.state.aresult(raise_on_failure=False)
    except Exception as exc:  # the result lives where the flow ran; say so instead of failing
        return {"error": f"result not readable here: {type(exc).__name__}"}
    return result.model_dump() if hasattr(result, "model_dump") else result


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> int:
    """Serve the API with uvicorn; refuse a non-loopback address without API_KEY."""
    import uvicorn

    host = os.environ.get("API_HOST", "127.0.0.1")
    port = int(os.environ.get("API_PORT", "7071"))
    api_key = os.environ.get("API_KEY") or None
    if not _is_loopback(host) and not api_key:
        print(f"error: API_HOST={host} is reachable from other machines: set API_KEY (clients then send it as "
              f"the x-functions-key header or ?code=), or bind to 127.0.0.1", file=sys.stderr)
        return 2
    uvicorn.run(create_app(api_key=api_key), host=host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
