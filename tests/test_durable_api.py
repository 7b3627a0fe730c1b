"""The Durable Functions routes without a Prefect server: instance id validation, the Python
client's input encoding, listing pages and their continuation token, query errors, and the
Host, Origin and key checks on every new route (the Prefect client is a fake here;
tests/test_http_deployment.py drives them with azure-functions-durable's client over a real server
and worker)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

import prefect.client.orchestration as orchestration

from site_backup import durable_api, http_api
from tests.test_http_api import FakePrefect

BASE = "http://127.0.0.1:7071"
DF = f"{BASE}/runtime/webhooks/durabletask"
JSON = {"Content-Type": "application/json"}
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def flow_run(i: int, state: str = "COMPLETED", tags=()):
    state_type = SimpleNamespace(value=state)
    return SimpleNamespace(id=uuid4(), tags=list(tags), state_type=state_type, parameters={"root_directory": "/s"},
                           state=SimpleNamespace(type=state_type, message="x"), created=T0 + timedelta(minutes=i),
                           updated=T0 + timedelta(minutes=i, seconds=30))


class FakeRuns(FakePrefect):
    """Flow runs kept in a list: tag lookups, filtered and paged listings, creation."""

    def __init__(self, runs=()):
        super().__init__()
        self.runs, self.create_kwargs = list(runs), []

    async def read_flow_runs(self, flow_run_filter=None, limit=None, offset=0, **kwargs):
        runs = self.runs
        if flow_run_filter and flow_run_filter.tags:
            runs = [r for r in runs if set(flow_run_filter.tags.all_) <= set(r.tags)]
        if flow_run_filter and flow_run_filter.state:
            runs = [r for r in runs if r.state_type.value in flow_run_filter.state.type.any_]
        return runs[offset:offset + (limit or 200)]

    async def create_flow_run_from_deployment(self, deployment_id, parameters=None, **kwargs):
        self.create_kwargs.append(kwargs)
        run = flow_run(len(self.runs), "SCHEDULED", kwargs.get("tags") or ())
        self.runs.append(run)
        return run


@pytest.fixture
def runs(monkeypatch):
    fake = FakeRuns([flow_run(i, "COMPLETED" if i % 2 else "FAILED") for i in range(5)])
    monkeypatch.setattr(orchestration, "get_client", fake)
    return fake


@pytest.fixture
def client(runs):
    with TestClient(http_api.create_app(), base_url=BASE) as c:
        yield c


def test_a_caller_chosen_id_names_and_tags_the_run_and_is_unique(client, runs):
    response = client.post(f"{DF}/orchestrators/E2_BackupSiteContent/nightly-2026.12", json="/srv/site")
    assert response.status_code == 202, response.text
    assert response.json()["id"] == "nightly-2026.12"
    assert response.headers["location"] == f"{DF}/instances/nightly-2026.12" == response.json()["statusQueryGetUri"]
    assert runs.create_kwargs == [{"name": "nightly-2026.12", "tags": ["instance:nightly-2026.12"],
                                   "idempotency_key": "instance:nightly-2026.12"}]
    assert client.get(f"{DF}/instances/nightly-2026.12").json()["instanceId"] == "nightly-2026.12"
    again = client.post(f"{DF}/orchestrators/E2_BackupSiteContent/nightly-2026.12", json="/srv/site")
    assert again.status_code == 409 and "purge it first" in again.json()["ExceptionMessage"]
    assert len(runs.create_kwargs) == 1


@pytest.mark.parametrize("instance_id", ["-lead", "a" * 101, "has space", "semi;colon", "quote'd", "%00"])
def test_a_bad_instance_id_gets_400_saying_what_an_id_may_hold(client, runs, instance_id):
    response = client.post(f"{DF}/orchestrators/E2_BackupSiteContent/{instance_id}", json="/srv/site")
    assert response.status_code == 400, response.text
    assert "1-100 letters, digits" in response.json()["ExceptionMessage"]  # what the client raises with
    assert runs.create_kwargs == []


@pytest.mark.parametrize("raw,expected", [
    (b'"\\"/srv/site\\""', b'"/srv/site"'),                       # the client's df_dumps, then json=
    (b'"{\\"root_directory\\": \\"/x\\"}"', b'{"root_directory": "/x"}'),
    (b'"/srv/site"', b'"/srv/site"'),                             # sent once, as curl does
    (b'"123"', b'"123"'),                                         # a path that is a JSON number stays a path
    (b'{"root_directory": "/x"}', b'{"root_directory": "/x"}'),
    (b"not json", b"not json"),
])
def test_the_python_clients_double_encoded_input_is_unwrapped(raw, expected):
    assert durable_api.unwrap_input(raw) == expected


def test_a_start_without_input_gets_400_the_client_raises_with(client, runs):
    response = client.post(f"{DF}/orchestrators/E2_BackupSiteContent")
    assert response.status_code == 400 and "client_input" in response.json()["ExceptionMessage"]


def test_listing_pages_follow_the_continuation_token(client, runs):
    everything = client.get(f"{DF}/instances/")
    assert everything.status_code == 200 and "x-ms-continuation-token" not in everything.headers
    assert len(everything.json()) == 5
    seen, token = [], None
    while True:
        page = client.get(f"{DF}/instances/?top=2", headers={"x-ms-continuation-token": token} if token else {})
        assert page.status_code == 200 and 1 <= len(page.json()) <= 2
        seen += [body["instanceId"] for body in page.json()]
        token = page.headers.get("x-ms-continuation-token")
        if token is None:
            break
    assert seen == [body["instanceId"] for body in everything.json()]


def test_listing_filters_by_status_and_creation_time(client, runs):
    completed = client.get(f"{DF}/instances/?runtimeStatus=Completed,Terminated&showInput=false").json()
    assert [b["runtimeStatus"] for b in completed] == ["Completed", "Completed"] and completed[0]["input"] is None
    window = client.get(f"{DF}/instances/?createdTimeFrom=2026-12-01T00:02:00.000000Z"
                        f"&createdTimeTo=2026-12-01T00:03:00.000000Z").json()
    assert [b["createdTime"] for b in window] == ["2026-12-01T00:02:00+00:00", "2026-12-01T00:03:00+00:00"]
    assert client.get(f"{DF}/instances/?runtimeStatus=Canceled").json() == []


@pytest.mark.parametrize("query,headers,message", [
    ("top=0", {}, "top must be"),
    ("top=abc", {}, "top must be"),
    ("top=2", {"x-ms-continuation-token": "x"}, "x-ms-continuation-token"),
    ("runtimeStatus=Done", {}, "runtimeStatus 'Done' is unknown"),
    ("createdTimeFrom=yesterday", {}, "createdTimeFrom='yesterday' is not a time"),
    ("createdTimeTo=2026-12-01T00:00:00", {}, "has no time zone"),
])
def test_a_bad_listing_query_gets_400_naming_it(client, runs, query, headers, message):
    response = client.get(f"{DF}/instances/?{query}", headers=headers)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_purging_by_query_needs_a_start_time_and_never_a_running_run(client, runs):
    assert client.delete(f"{DF}/instances/").status_code == 400
    runs.runs.append(flow_run(9, "RUNNING", ["instance:busy"]))
    refused = client.delete(f"{DF}/instances/busy")
    assert refused.status_code == 409 and "terminate it first" in refused.json()["error"]


NEW_ROUTES = [("POST", f"{DF}/orchestrators/E2_BackupSiteContent/x1"), ("GET", f"{DF}/instances/x1"),
              ("GET", f"{DF}/instances/"), ("DELETE", f"{DF}/instances/x1"), ("DELETE", f"{DF}/instances/"),
              ("POST", f"{DF}/instances/x1/restart"), ("POST", f"{DF}/instances/x1/rewind"),
              ("POST", f"{DF}/instances/x1/suspend"), ("POST", f"{DF}/instances/x1/resume"),
              ("POST", f"{DF}/instances/x1/raiseEvent/go")]


def test_every_new_route_checks_host_origin_and_key(runs):
    with TestClient(http_api.create_app(api_key="s3cret-key"), base_url=BASE) as keyed:
        for method, url in NEW_ROUTES:
            body = {"content": b'"/srv"', "headers": JSON} if method == "POST" else {}
            assert keyed.request(method, url, **body).status_code == 401, url
            wrong = base64.b64encode(b"key:wrong").decode()
            assert keyed.request(method, url, headers={"Authorization": f"Basic {wrong}"}).status_code == 401, url
            foreign = {"x-functions-key": "s3cret-key", "Host": "attacker.example"}
            assert keyed.request(method, url, headers=foreign).status_code == 421, url
            cross = {"x-functions-key": "s3cret-key", "Origin": "http://attacker.example"}
            assert keyed.request(method, url, headers=cross).status_code == 403, url
        right = base64.b64encode(b"key:s3cret-key").decode()
        assert keyed.get(f"{DF}/instances/x1", headers={"Authorization": f"Basic {right}"}).status_code == 404
        assert keyed.get(f"{DF}/instances/x1?code=s3cret-key").status_code == 404
    assert runs.create_kwargs == []


def test_raise_event_and_suspend_are_refused_with_the_reason(client, runs):
    runs.runs.append(flow_run(9, "RUNNING", ["instance:busy"]))
    event = client.post(f"{DF}/instances/busy/raiseEvent/Approve", json={})
    assert event.status_code == 501 and "waits for no event" in event.json()["error"]
    suspend = client.post(f"{DF}/instances/busy/suspend?reason=x")
    assert suspend.status_code == 501 and "pauses a flow run only from inside" in suspend.json()["error"]
    assert client.post(f"{DF}/instances/nothing/raiseEvent/Approve", json={}).status_code == 404


def test_listing_without_the_deployment_gets_503_with_the_fix(client, runs):
    from prefect.exceptions import ObjectNotFound

    runs.fail["read_deployment_by_name"] = ObjectNotFound(http_exc=Exception("404"))
    response = client.get(f"{DF}/instances/")
    assert response.status_code == 503 and "make deploy" in response.json()["ExceptionMessage"]
