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
import logging
import os
import re
import socket
import sys

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from site_backup.api_runs import (BODY_LIMIT, FINISHED, FUNCTION_NAMES, RETRY_AFTER_SECONDS, RUNTIME_STATUS, ApiError,  # noqa: F401
                                  check_content_type, custom_status, parse_start_body, prefect_api_url,
                                  prefect_client, read_body, status_body, status_response)
from site_backup.errors import ConfigurationError

LOG = logging.getLogger("site_backup.http_api")

_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(\d{1,5}))?")


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


async def _read_run(instance_id: str):
    from site_backup.durable_api import find_run

    return await find_run(instance_id)


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
