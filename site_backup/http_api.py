"""The Durable Functions sample's HTTP contract over Prefect: start a backup with
`POST /orchestrators/{name}`, poll `GET /instances/{id}` until Completed, terminate.

Run with `make api` or `python -m site_backup.http_api`. Settings (environment):
API_HOST (default 127.0.0.1), API_PORT (7071), API_KEY (required when API_HOST is not a
loopback address), API_ALLOWED_HOSTS (more names clients may use in the Host header,
comma-separated, each `name` or `name:port`), SITE_BACKUP_DEPLOYMENT (default
backup-site-content/local), PREFECT_API_URL (the Prefect server)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import sys
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from site_backup.errors import ConfigurationError
from site_backup.parameters import BackupParameters, ValidationError, describe

LOG = logging.getLogger("site_backup.http_api")

FUNCTION_NAMES = {"backup_site_content", "backup-site-content", "E2_BackupSiteContent"}
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
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(\d{1,5}))?")


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


def served_hosts(api_host: str, port: int, extra: str = "") -> tuple[set[str], set[str]]:
    """The Host header values the API answers: (exact `host:port` values, names allowed
    with any port). Checking it stops DNS rebinding: a page whose own name points at
    127.0.0.1 still sends its own name."""
    exact = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
    if api_host not in ("0.0.0.0", "::", ""):
        exact.add(f"{_bracketed(api_host.lower())}:{port}")
    any_port = set()
    for entry in re.split(r"[,\s]+", extra.strip().lower()):
        if not entry:
            continue
        entry = _bracketed(entry)
        match = _HOST.fullmatch(entry)
        if not match:
            raise ConfigurationError(f"API_ALLOWED_HOSTS: {entry!r} is not a host name: give names such as "
                                     f"'backup.example.org' or 'backup.example.org:8443', comma-separated")
        (exact if match.group(2) else any_port).add(entry)
    return exact, any_port


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def create_app(api_key: str | None = None, deployment: str | None = None) -> FastAPI:
    """The ASGI application. With `api_key`, every request must carry it. The Host names
    it answers come from API_HOST, API_PORT and API_ALLOWED_HOSTS."""
    deployment_name = deployment or os.environ.get("SITE_BACKUP_DEPLOYMENT", "backup-site-content/local")
    if deployment_name.count("/") != 1 or deployment_name.startswith("/") or deployment_name.endswith("/"):
        raise ConfigurationError(f"SITE_BACKUP_DEPLOYMENT={deployment_name!r} is not a deployment name: give "
                                 f"'flow-name/deployment-name', e.g. 'backup-site-content/local'")
    exact_hosts, any_port_hosts = served_hosts(os.environ.get("API_HOST", "127.0.0.1"),
                                               int(os.environ.get("API_PORT", "7071")),
                                               os.environ.get("API_ALLOWED_HOSTS", ""))
    app = FastAPI(title="site-backup orchestration API", docs_url=None, redoc_url=None, openapi_url=None)

    def checked_host(request: Request) -> str:
        host = request.headers.get("host", "").strip().lower()
        match = _HOST.fullmatch(host)
        if not match or (host not in exact_hosts and match.group(1) not in any_port_hosts):
            raise ApiError(421, "this API does not answer to that Host name: use 127.0.0.1, localhost or the "
                                "address it listens on, or add the name to API_ALLOWED_HOSTS")
        return host

    from site_backup import durable_api

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            request.state.origin = f"{request.url.scheme}://{checked_host(request)}"
            origin = request.headers.get("origin")
            # Browsers send Origin on cross-site requests; another site never starts a backup.
            if origin is not None and origin.lower() != request.state.origin:
                raise ApiError(403, "requests from another web site's page (Origin header) are refused")
            if api_key:
                given = (request.headers.get("x-functions-key") or request.query_params.get("code")
                         or durable_api.basic_password(request.headers.get("authorization")))
                if not hmac.compare_digest(given.encode(), api_key.encode()):
                    raise ApiError(401, "missing or wrong API key: send it as x-functions-key or ?code=")
            return await call_next(request)
        except ApiError as exc:
            return durable_api.error_response(request, exc)
        except Exception as exc:
            # The path only: the query may hold the key.
            LOG.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse({"error": f"internal error ({type(exc).__name__}): see the API's log"},
                                status_code=500)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return durable_api.error_response(request, exc)

    def url(request: Request, path: str) -> str:
        # Built from the checked Host, never from the query: the key is not echoed.
        return f"{request.state.origin}{request.scope.get('root_path', '')}{path}"

    durable_api.add_routes(app, deployment_name, url)

    @app.post("/orchestrators/{function_name}")
    @app.post("/api/orchestrators/{function_name}")
    async def start(function_name: str, request: Request):
        if function_name not in FUNCTION_NAMES:
            raise ApiError(404, f"unknown function {function_name!r}: use one of {sorted(FUNCTION_NAMES)}")
        check_content_type(request.headers.get("content-type"))
        parameters = parse_start_body(await read_body(request))
        run_id = str((await durable_api.create_run(deployment_name, parameters)).id)
        body = {"id": run_id, "statusQueryGetUri": url(request, f"/instances/{run_id}"),
                "terminatePostUri": url(request, f"/instances/{run_id}/terminate")}
        return JSONResponse(body, status_code=202, headers={"Location": body["statusQueryGetUri"]})

    @app.get("/instances/{instance_id}")
    async def status(instance_id: str, request: Request):
        run = await _read_run(instance_id)
        if run is None:
            raise ApiError(404, f"no instance {instance_id!r}")
        return status_response(await status_body(run), url(request, request.url.path))

    @app.post("/instances/{instance_id}/terminate")
    @app.post("/runtime/webhooks/durabletask/instances/{instance_id}/terminate")
    async def terminate(instance_id: str, reason: str = ""):
        from prefect.states import Cancelling

        run = await _read_run(instance_id)
        if run is None:
            raise ApiError(404, f"no instance {instance_id!r}")
        if RUNTIME_STATUS.get(run.state_type.value if run.state_type else "", "") in FINISHED:
            raise ApiError(410, "the instance already finished")
        async with prefect_client() as client:
            await client.set_flow_run_state(run.id, Cancelling(message=f"terminated over HTTP {reason}".strip()[:500]), force=True)
        return JSONResponse(None, status_code=202)

    return app


async def status_body(run) -> dict[str, Any]:
    """A run as Durable Functions' status: runtimeStatus, progress, the summary."""
    from site_backup.durable_api import instance_id_of

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


async def _read_run(instance_id: str):
    from site_backup.durable_api import find_run

    return await find_run(instance_id)


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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = os.environ.get("API_HOST", "127.0.0.1")
    api_key = os.environ.get("API_KEY") or None
    deployment = os.environ.get("SITE_BACKUP_DEPLOYMENT", "backup-site-content/local")
    try:
        port = int(os.environ.get("API_PORT", "7071"))
        if not _is_loopback(host) and not api_key:
            raise ConfigurationError(f"API_HOST={host} is reachable from other machines: set API_KEY (clients then "
                                     f"send it as the x-functions-key header or ?code=), or bind to 127.0.0.1")
        app = create_app(api_key=api_key, deployment=deployment)
        listener = _listen(host, port)
    except ValueError:
        print(f"error: API_PORT={os.environ['API_PORT']!r} is not a port number: give one such as 7071",
              file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror}): set API_PORT to a free port or API_HOST "
              f"to an address of this machine", file=sys.stderr)
        return 2
    LOG.info("listening on http://%s:%s; starts deployment '%s' on the Prefect server at %s",
             _bracketed(host), port, deployment, prefect_api_url() or "(PREFECT_API_URL not set)")
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The bound socket, so a busy port is a one-line error before anything is announced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


if __name__ == "__main__":
    # Through the imported module: durable_api imports it, and a second copy run as
    # __main__ would have its own ApiError class.
    from site_backup.http_api import main as imported_main

    sys.exit(imported_main())
