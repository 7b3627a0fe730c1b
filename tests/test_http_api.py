"""The HTTP start/status API without a Prefect server: request validation, body limit,
content type, Host and Origin checks, the key never echoed, and Prefect's errors mapped
(the Prefect client is replaced by a fake here; tests/test_http_deployment.py drives the API
against a real server and worker)."""

from __future__ import annotations

import inspect
import json
import typing
from types import SimpleNamespace
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi.testclient import TestClient

import prefect.client.orchestration as orchestration
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from site_backup import http_api

BASE = "http://127.0.0.1:7071"
START = f"{BASE}/orchestrators/E2_BackupSiteContent"
JSON = {"Content-Type": "application/json"}
RUN_ID = UUID("11111111-2222-3333-4444-555555555555")


class FakePrefect:
    """The few client calls the API makes, recorded; `fail` maps a method name to the
    exception it raises."""

    def __init__(self, fail: dict[str, BaseException] | None = None, state: str = "RUNNING"):
        self.fail = fail or {}
        self.state = state
        self.created: list[dict] = []

    def __call__(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def _maybe_fail(self, name: str):
        if name in self.fail:
            raise self.fail[name]

    async def read_deployment_by_name(self, name):
        self._maybe_fail("read_deployment_by_name")
        return SimpleNamespace(id=uuid4(), name=name)

    async def create_flow_run_from_deployment(self, deployment_id, parameters=None, **kwargs):
        self._maybe_fail("create_flow_run_from_deployment")
        self.created.append(parameters)
        return SimpleNamespace(id=RUN_ID)

    async def read_flow_run(self, run_id):
        self._maybe_fail("read_flow_run")
        state_type = SimpleNamespace(value=self.state)
        return SimpleNamespace(id=run_id, state_type=state_type, parameters={"root_directory": "/site"},
                               state=SimpleNamespace(type=state_type, message=None),
                               created=None, updated=None, tags=[])

    async def read_flow_runs(self, **kwargs):  # no run has a caller-chosen id here
        self._maybe_fail("read_flow_run")
        return []

    async def read_artifacts(self, **kwargs):
        return []

    async def set_flow_run_state(self, *args, **kwargs):
        self._maybe_fail("set_flow_run_state")


@pytest.fixture
def prefect(monkeypatch):
    fake = FakePrefect()
    monkeypatch.setattr(orchestration, "get_client", fake)
    return fake


@pytest.fixture
def client(prefect):
    with TestClient(http_api.create_app(), base_url=BASE, raise_server_exceptions=False) as c:
        yield c


def prefect_http_error(status: int, detail: str) -> PrefectHTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/deployments/x/create_flow_run")
    response = httpx.Response(status, json={"detail": detail}, request=request)
    return PrefectHTTPStatusError.from_httpx_error(
        httpx.HTTPStatusError(f"Client error '{status}'", request=request, response=response))


# --- the start body ---------------------------------------------------------------------


def test_a_json_string_is_the_root_directory_as_in_the_sample(client, prefect):
    response = client.post(START, content=b'"/srv/site"', headers=JSON)
    assert response.status_code == 202, response.text
    assert prefect.created == [{"root_directory": "/srv/site"}]
    assert response.headers["location"] == f"{BASE}/instances/{RUN_ID}" == response.json()["statusQueryGetUri"]


def test_an_object_of_valid_parameters_is_passed_on_unchanged(client, prefect):
    body = {"root_directory": "/srv/site", "container": "site-2024", "prefix": "web/prod",
            "include": ["*.html", "css/**"], "exclude": [], "files_per_batch": 50, "checkpoint_days": 7,
            "dry_run": True, "credentials_block": None}
    response = client.post(START, json=body)
    assert response.status_code == 202, response.text
    assert prefect.created == [body]


@pytest.mark.parametrize("body,field,reason", [
    ({"files_per_batch": "abc"}, "files_per_batch", "integer"),
    ({"files_per_batch": "5"}, "files_per_batch", "integer"),
    ({"files_per_batch": 2.5}, "files_per_batch", "integer"),
    ({"files_per_batch": True}, "files_per_batch", "integer"),
    ({"files_per_batch": 0}, "files_per_batch", "greater than 0"),
    ({"mib_per_batch": -1}, "mib_per_batch", "greater than 0"),
    ({"blocks_in_flight": -3}, "blocks_in_flight", "greater than 0"),
    ({"checkpoint_days": -1}, "checkpoint_days", "greater than 0"),
    ({"container": 123}, "container", "valid string"),
    ({"container": "Bad_Name"}, "container", "invalid container name 'Bad_Name'"),
    ({"container": "ab"}, "container", "3-63 characters"),
    ({"container": "a--b"}, "container", "single hyphens"),
    ({"prefix": "a/../b"}, "prefix", "without '.' or '..'"),
    ({"include": "*.txt"}, "include", "valid list"),
    ({"include": [1]}, "include.0", "valid string"),
    ({"exclude": [""]}, "exclude", "empty pattern"),
    ({"include": ["*.html", "[z-a]"]}, "include", "'[z-a]'"),
    ({"exclude": ["**/[!]"]}, "exclude", "'**/[!]'"),
    ({"dry_run": "yes"}, "dry_run", "valid boolean"),
    ({"root_directory": ""}, "root_directory", "empty"),
    ({"root_directory": 5}, "root_directory", "valid string"),
    ({"root_directory": "/a\u0000b"}, "root_directory", "NUL"),
])
def test_a_bad_parameter_gets_400_naming_the_field(client, prefect, body, field, reason):
    response = client.post(START, json={"root_directory": "/srv/site", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith(f"{field}: ") and reason in error, error
    assert prefect.created == []


@pytest.mark.parametrize("body,message", [
    (b"not json", "not JSON"),
    (b"42", "JSON int"),
    (b"[]", "JSON list"),
    (b'{"root_directory": "/x", "colour": "red"}', "unknown parameters ['colour']"),
    (b'{"container": "abc"}', "root_directory is missing"),
    (b"", "empty body"),
    (b'{"root_directory": "/x", "checkpoint_days": NaN}', "not JSON"),
    (b"[" * 40000 + b"]" * 20000, "not JSON"),
    (b'"\xff"', "not JSON"),
])
def test_a_malformed_body_gets_400_with_a_message(client, prefect, body, message):
    response = client.post(START, content=body, headers=JSON)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_the_allowed_fields_are_the_backup_flows_parameters():
    """The request model and the flow's signature cannot drift apart: same names, defaults
    and types."""
    from flows.backup_site_content import backup_site_content
    from site_backup.parameters import BackupParameters

    signature = inspect.signature(backup_site_content.fn)
    hints = typing.get_type_hints(backup_site_content.fn)
    fields = BackupParameters.model_fields
    assert list(fields) == list(signature.parameters)
    for name, parameter in signature.parameters.items():
        assert fields[name].annotation == hints[name], name
        if parameter.default is inspect.Parameter.empty:
            assert fields[name].is_required(), name
        else:  # a flow parameter may declare its default through pydantic's Field
            assert fields[name].default == getattr(parameter.default, "default", parameter.default), name


# --- body size and content type ---------------------------------------------------------


def test_a_body_over_64_kib_gets_413_without_being_read_whole(prefect):
    """Chunked (no Content-Length): the API stops reading once the limit is passed."""
    import asyncio

    chunks_read, sent = [], []

    async def receive():
        chunks_read.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": len(chunks_read) < 1000}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/orchestrators/E2_BackupSiteContent", "raw_path": b"/orchestrators/E2_BackupSiteContent",
             "root_path": "", "query_string": b"", "server": ("127.0.0.1", 7071), "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"127.0.0.1:7071"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")]}
    asyncio.run(http_api.create_app()(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413 and "64 KiB" in json.loads(body)["error"]
    assert len(chunks_read) <= 3 and prefect.created == []


def test_a_declared_length_over_the_limit_gets_413_at_once(client, prefect):
    response = client.post(START, content=b'"' + b"x" * 70000 + b'"', headers=JSON)
    assert response.status_code == 413 and "64 KiB" in response.json()["error"]


def test_a_body_just_under_the_limit_is_read(client, prefect):
    root = "/" + "x" * (64 * 1024 - 10)
    response = client.post(START, content=json.dumps(root).encode(), headers=JSON)
    assert response.status_code == 202 and prefect.created == [{"root_directory": root}]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json; charset=latin-1"])
def test_only_json_bodies_are_accepted(client, prefect, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(START, content=b'"/srv/site"', headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert prefect.created == []


def test_a_charset_parameter_is_fine(client, prefect):
    response = client.post(START, content=b'"/srv/site"', headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert response.status_code == 202


# --- Host and Origin (DNS rebinding, cross-site requests) --------------------------------


def test_the_attack_from_a_web_page_is_refused(client, prefect):
    """A page on attacker.example whose name resolves to 127.0.0.1 posts a "simple" request."""
    response = client.post(START, content=b'"/"', headers={
        "Content-Type": "text/plain", "Origin": "http://attacker.example", "Host": "attacker.example"})
    assert response.status_code in (400, 421) and "attacker.example" not in response.headers.get("location", "")
    assert prefect.created == []


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:7071", "127.0.0.1:8080", "localhost",
                                  "127.0.0.1.attacker.example:7071", "", "127.0.0.1:7071@evil"])
def test_a_foreign_host_is_refused_for_every_method(client, prefect, host):
    for method, url, kwargs in [("POST", START, {"content": b'"/srv"'}), ("GET", f"{BASE}/instances/{RUN_ID}", {}),
                                ("POST", f"{BASE}/instances/{RUN_ID}/terminate", {})]:
        response = client.request(method, url, headers={**JSON, "Host": host}, **kwargs)
        assert response.status_code == 421 and "API_ALLOWED_HOSTS" in response.json()["error"], (method, host)
    assert prefect.created == []


@pytest.mark.parametrize("host", ["127.0.0.1:7071", "localhost:7071", "LOCALHOST:7071", "[::1]:7071"])
def test_the_loopback_names_are_served(client, prefect, host):
    response = client.post(START, content=b'"/srv"', headers={**JSON, "Host": host})
    assert response.status_code == 202
    assert response.headers["location"] == f"http://{host.lower()}/instances/{RUN_ID}"
    assert response.json()["terminatePostUri"] == f"http://{host.lower()}/instances/{RUN_ID}/terminate"


def test_api_allowed_hosts_adds_names(prefect, monkeypatch):
    monkeypatch.setenv("API_ALLOWED_HOSTS", "backup.example.org, 10.0.0.5:7071")
    with TestClient(http_api.create_app(), base_url=BASE) as c:
        for host in ["backup.example.org", "backup.example.org:8443", "10.0.0.5:7071"]:
            response = c.post(START, content=b'"/srv"', headers={**JSON, "Host": host})
            assert response.status_code == 202 and response.headers["location"].startswith(f"http://{host}/")
        assert c.post(START, content=b'"/srv"', headers={**JSON, "Host": "10.0.0.5:80"}).status_code == 421


def test_the_bound_api_host_is_served(prefect, monkeypatch):
    monkeypatch.setenv("API_HOST", "192.168.1.20")
    monkeypatch.setenv("API_PORT", "8080")
    with TestClient(http_api.create_app(api_key="k"), base_url="http://192.168.1.20:8080") as c:
        ok = c.get(f"http://192.168.1.20:8080/instances/{RUN_ID}", headers={"x-functions-key": "k"})
        assert ok.status_code == 202
        assert c.get(f"http://127.0.0.1:8080/instances/{RUN_ID}", headers={"x-functions-key": "k"}).status_code == 202
        assert c.get(f"http://192.168.1.21:8080/instances/{RUN_ID}", headers={"x-functions-key": "k"}).status_code == 421


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "http://localhost:7071", "https://127.0.0.1:7071",
                                    "http://127.0.0.1:7072"])
def test_a_foreign_origin_is_refused_for_every_method(client, prefect, origin):
    for method, url, kwargs in [("POST", START, {"content": b'"/srv"'}), ("GET", f"{BASE}/instances/{RUN_ID}", {}),
                                ("POST", f"{BASE}/instances/{RUN_ID}/terminate", {})]:
        response = client.request(method, url, headers={**JSON, "Origin": origin}, **kwargs)
        assert response.status_code == 403 and "Origin" in response.json()["error"], (method, origin)
    assert prefect.created == []


def test_the_apis_own_origin_is_accepted(client, prefect):
    response = client.post(START, content=b'"/srv"', headers={**JSON, "Origin": BASE})
    assert response.status_code == 202


# --- the key ----------------------------------------------------------------------------


@pytest.fixture
def keyed(prefect):
    with TestClient(http_api.create_app(api_key="s3cret-key"), base_url=BASE) as c:
        yield c


def test_the_key_is_never_echoed(keyed, prefect):
    answers = [
        keyed.post(f"{START}?code=s3cret-key", content=b'"/srv"', headers=JSON),
        keyed.get(f"{BASE}/instances/{RUN_ID}?code=s3cret-key"),
        keyed.get(f"{BASE}/instances/{RUN_ID}", headers={"x-functions-key": "s3cret-key"}),
        keyed.post(f"{BASE}/instances/{RUN_ID}/terminate?code=s3cret-key"),
        keyed.get(f"{BASE}/instances/{RUN_ID}?code=wrong"),
        keyed.post(f"{START}?code=s3cret-key", content=b'{"colour": 1}', headers=JSON),
    ]
    assert [a.status_code for a in answers] == [202, 202, 202, 202, 401, 400]
    for answer in answers:
        assert "s3cret" not in answer.text and "s3cret" not in json.dumps(dict(answer.headers))
    assert answers[1].headers["location"] == f"{BASE}/instances/{RUN_ID}"


def test_a_wrong_key_gets_401(keyed, prefect):
    assert keyed.get(f"{BASE}/instances/{RUN_ID}").status_code == 401
    assert keyed.get(f"{BASE}/instances/{RUN_ID}", headers={"x-functions-key": "wrong"}).status_code == 401
    assert keyed.post(START, content=b'"/srv"', headers=JSON).status_code == 401
    assert prefect.created == []


# --- Prefect's errors -------------------------------------------------------------------


def test_a_missing_deployment_gets_503_with_the_fix(client, prefect):
    prefect.fail["read_deployment_by_name"] = ObjectNotFound(http_exc=Exception("404"))
    response = client.post(START, content=b'"/srv"', headers=JSON)
    assert response.status_code == 503 and "make deploy" in response.json()["error"]


@pytest.mark.parametrize("status,expected", [(409, 409), (422, 422), (400, 422)])
def test_a_conflict_or_validation_error_from_prefect_is_passed_on(client, prefect, status, expected):
    detail = "Error creating flow run: Validation failed for field 'files_per_batch'."
    prefect.fail["create_flow_run_from_deployment"] = prefect_http_error(status, detail)
    response = client.post(START, content=b'"/srv"', headers=JSON)
    assert response.status_code == expected and detail in response.json()["error"], response.text


@pytest.mark.parametrize("call", ["read_deployment_by_name", "create_flow_run_from_deployment"])
def test_prefect_unreachable_gets_503_naming_prefect_api_url(client, prefect, call):
    prefect.fail[call] = httpx.ConnectError("All connection attempts failed")
    response = client.post(START, content=b'"/srv"', headers=JSON)
    assert response.status_code == 503 and "PREFECT_API_URL" in response.json()["error"], response.text


@pytest.mark.parametrize("method,url", [("GET", f"{BASE}/instances/{RUN_ID}"),
                                        ("POST", f"{BASE}/instances/{RUN_ID}/terminate")])
def test_prefect_unreachable_while_polling_or_terminating_gets_503(client, prefect, method, url):
    prefect.fail["read_flow_run"] = httpx.ConnectError("All connection attempts failed")
    response = client.request(method, url)
    assert response.status_code == 503 and "PREFECT_API_URL" in response.json()["error"]


def test_an_unexpected_error_answers_json_and_is_logged(client, prefect, caplog):
    prefect.fail["read_flow_run"] = RuntimeError("something odd")
    response = client.get(f"{BASE}/instances/{RUN_ID}?code=abc")
    assert response.status_code == 500 and "RuntimeError" in response.json()["error"]
    assert any("something odd" in (r.exc_text or "") or "something odd" in r.getMessage() for r in caplog.records)


# --- status ------------------------------------------------------------------------------


def test_status_while_running_gives_202_with_a_clean_location(client, prefect):
    response = client.get(f"{BASE}/runtime/webhooks/durabletask/instances/{RUN_ID}?showHistory=false")
    assert response.status_code == 202 and response.headers["retry-after"]
    assert response.headers["location"] == f"{BASE}/runtime/webhooks/durabletask/instances/{RUN_ID}"


# --- start-up ---------------------------------------------------------------------------


def test_start_up_says_where_it_listens_and_which_deployment(monkeypatch, caplog):
    import socket

    import uvicorn

    from tests.conftest import free_port

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets[0].getsockname()))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # never serve for real here
    port = free_port()
    monkeypatch.setenv("API_PORT", str(port))
    monkeypatch.setenv("SITE_BACKUP_DEPLOYMENT", "backup-site-content/nightly")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    caplog.set_level("INFO", logger="site_backup.http_api")
    assert http_api.main() == 0
    assert served == [("127.0.0.1", port)]
    lines = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
    assert lines == [f"listening on http://127.0.0.1:{port}; starts deployment 'backup-site-content/nightly' "
                     f"on the Prefect server at http://127.0.0.1:4200/api"]

    with socket.socket() as busy:  # the port taken: one line and exit 2, nothing announced
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert http_api.main() == 2


@pytest.mark.parametrize("env,message", [
    ({"API_PORT": "seventy"}, "API_PORT='seventy' is not a port number"),
    ({"API_HOST": "0.0.0.0"}, "set API_KEY"),
    ({"API_ALLOWED_HOSTS": "http://backup.example.org/"}, "API_ALLOWED_HOSTS: 'http://backup.example.org/'"),
    ({"SITE_BACKUP_DEPLOYMENT": "local"}, "SITE_BACKUP_DEPLOYMENT='local' is not a deployment name"),
])
def test_bad_settings_exit_2_with_one_line(monkeypatch, capsys, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert http_api.main() == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


# --- progress ---------------------------------------------------------------------------


def test_custom_status_comes_from_the_progress_artifacts_metadata():
    from tasks.report import progress_counts

    metadata = progress_counts(2, 5, 606, 10_000)
    expected = {"filesDone": 2, "filesTotal": 5, "bytesDone": 606, "bytesTotal": 10_000}
    assert http_api.custom_status(metadata, "2 of 5 files, 606 B of 9.8 KiB") == expected
    # Runs recorded before the counts were in the metadata: their description.
    assert http_api.custom_status(None, "2/5 files, 606/10000 bytes") == expected
    assert http_api.custom_status({}, "starting") is None


def test_status_reads_progress_from_the_artifact(client, prefect, monkeypatch):
    from tasks.report import progress_counts

    async def read_artifacts(**kwargs):
        return [SimpleNamespace(metadata_=progress_counts(1, 3, 10, 30), description="1/3 files")]

    monkeypatch.setattr(prefect, "read_artifacts", read_artifacts)
    body = client.get(f"{BASE}/instances/{RUN_ID}").json()
    assert body["customStatus"] == {"filesDone": 1, "filesTotal": 3, "bytesDone": 10, "bytesTotal": 30}
