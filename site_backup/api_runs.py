"""A Prefect flow run as the sample's orchestration instance, shared by the HTTP API's two
sets of routes (http_api.py, durable_api.py): the start request's body, the status body and
its answer, the Prefect client whose failures become answers."""

from __future__ import annotations

import json
import os
import re
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from site_backup.parameters import BackupParameters, ValidationError, describe

FUNCTION_NAMES = {"backup_site_content", "backup-site-content", "E2_BackupSiteContent"}
TAG = "instance:"  # a flow run's tag that holds the instance id its caller chose


RETRY_AFTER_SECONDS = 2
BODY_LIMIT = 64 * 1024  # a start body is a path and a few parameters

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


class ApiError(Exception):
    """A request that gets `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_start_body(raw: bytes) -> dict[str, Any]:
    """The flow parameters a start request sets: the body is a JSON string (the root
    directory, as in the sample) or a JSON object of parameters. ApiError (400) says
    what is wrong."""
    if not raw.strip():
        raise ApiError(400, 'empty body: send the root directory as a JSON string, e.g. "D:/home/site"')
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than any parameter needs
        raise ApiError(400, "body is not JSON (UTF-8, no NaN): send the root directory as a JSON string "
                            "or an object of parameters") from None
    if isinstance(body, str):
        body = {"root_directory": body}
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise ApiError(400, f"body is a JSON {kind}: send a string (the root directory) or an object of parameters")
    try:
        return BackupParameters.model_validate(body).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise ApiError(400, describe(exc)) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def check_content_type(value: str | None) -> None:
    """Only JSON: a browser can send text/plain or a form to any address without asking
    first, but not application/json."""
    media, *params = (value or "").split(";")
    charsets = [p.split("=", 1)[1].strip().strip('"').lower() for p in params
                if p.split("=", 1)[0].strip().lower() == "charset" and "=" in p]
    if media.strip().lower() != "application/json" or any(c not in ("utf-8", "utf8") for c in charsets):
        raise ApiError(415, f"send the body as UTF-8 JSON with Content-Type: application/json (got {value!r})")


async def read_body(request: Request, limit: int = BODY_LIMIT) -> bytes:
    """The request body, refused (413) as soon as it passes `limit`, so nothing larger is
    ever held in memory."""
    message = f"body over {limit // 1024} KiB: a start request is a path and a few parameters"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, message)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, message)
    return bytes(body)


async def status_body(run) -> dict[str, Any]:
    """A run as Durable Functions' status: runtimeStatus, progress, the summary."""
    runtime = RUNTIME_STATUS.get(run.state_type.value if run.state_type else "PENDING", "Pending")
    return {"name": "E2_BackupSiteContent", "instanceId": instance_id_of(run), "runtimeStatus": runtime,
            "input": run.parameters, "customStatus": await _progress(run.id),
            "output": await _output(run) if runtime in ("Completed", "Failed") else None,
            "createdTime": _iso(run.created), "lastUpdatedTime": _iso(run.updated)}


def status_response(body: dict[str, Any], location: str) -> JSONResponse:
    """200 once finished, else 202 with where and when to ask again."""
    if body["runtimeStatus"] in FINISHED:
        return JSONResponse(body, status_code=200)
    return JSONResponse(body, status_code=202, headers={"Location": location, "Retry-After": str(RETRY_AFTER_SECONDS)})


@asynccontextmanager
async def prefect_client():
    """A Prefect client whose failures become answers: the server unreachable (503, naming
    PREFECT_API_URL), a conflict or invalid request (409/422 with the server's reason),
    anything else it answers (502)."""
    import httpx
    from prefect.client import orchestration
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        async with orchestration.get_client() as client:
            yield client
    except (httpx.TransportError, OSError) as exc:
        raise ApiError(503, f"the Prefect server at PREFECT_API_URL={prefect_api_url() or '(not set)'} "
                            f"does not answer ({type(exc).__name__}: {exc}): start it (`make server`) or set "
                            f"PREFECT_API_URL") from None
    except PrefectHTTPStatusError as exc:
        answered = exc.response.status_code
        status = 409 if answered == 409 else 422 if answered in (400, 422) else 502
        raise ApiError(status, f"the Prefect server answered {answered}: {_detail(exc.response)}") from None


def prefect_api_url() -> str | None:
    """The Prefect server's address: the environment, else the active Prefect profile."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()


def _detail(response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.text)[:500]


def custom_status(metadata: dict[str, str] | None, description: str | None = None) -> dict[str, int] | None:
    """Live progress from the run's progress artifact: its metadata, or for runs recorded
    before the counts were kept there, its description."""
    try:
        counts = [int((metadata or {})[key]) for key in ("files_done", "files_total", "bytes_done", "bytes_total")]
    except (KeyError, ValueError):
        match = _PROGRESS.search(description or "")
        if not match:
            return None
        counts = [int(group) for group in match.groups()]
    return dict(zip(("filesDone", "filesTotal", "bytesDone", "bytesTotal"), counts))


async def _progress(run_id) -> dict[str, int] | None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with prefect_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                                           key=ArtifactFilterKey(any_=["backup-progress"])),
            limit=1,
        )
    return custom_status(artifacts[0].metadata_, artifacts[0].description) if artifacts else None


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


def instance_id_of(run) -> str:
    """The id callers know the run by: the one they chose, else the flow run's id."""
    return next((tag[len(TAG):] for tag in run.tags or [] if tag.startswith(TAG)), str(run.id))
