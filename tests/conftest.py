"""Shared fixtures: a real Azurite on a free port, a Prefect test server, isolated checkpoints."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.azurite_auth import TokenEndpoint, self_signed_certificate, unsigned_storage_token

pytest_plugins = ["tests.cpu_log"]  # TEST_CPU_LOG=FILE: CPU per test

PROJECT = Path(__file__).resolve().parent.parent
AZURITE_BIN = PROJECT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"

# Tests must never reach a developer's own Prefect server or real Azure.
for _name in ("PREFECT_API_URL", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_URL"):
    os.environ.pop(_name, None)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="site-backup-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)  # each test process makes one
# prefect.toml names the clone's profile (the running `make server`), ahead of PREFECT_HOME.
os.environ["PREFECT_PROFILES_PATH"] = os.path.join(os.environ["PREFECT_HOME"], "profiles.toml")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


# `make test` runs the suite in several processes (pytest-xdist, --dist loadgroup). The
# files that take longest start first, so that the processes end at about the same time;
# files whose tests share a server of their own run whole in one process, once; the README's
# fresh clone and the benchmark's smoke run, each a whole stack at once, never run side by side.
# Then the files whose tests mostly wait (a lease to expire, storage that stops answering or
# answers 429 and 503): last, they left a core idle for the run's final two minutes.
LONGEST_FIRST = ["test_deployment.py", "test_http_deployment.py", "test_readme.py", "test_bench_smoke.py", "test_sharded.py",
                 "test_services.py", "test_prune.py", "test_retry.py"]
GROUPS = {"test_deployment.py": "deployment-server", "test_http_deployment.py": "deployment-server",
          "test_sharded.py": "sharded-server",
          "test_services.py": "services-clone", "test_readme.py": "whole-stack",
          "test_bench_smoke.py": "whole-stack"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file stays


def pytest_xdist_make_scheduler(config, log):
    """Groups by file name (GROUPS), every other test on its own. xdist's own `xdist_group`
    marks do nothing under pytest 9.2 (xdist 3.8 renames `item._nodeid`, which pytest no
    longer reads), so each process built the shared servers again."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return GROUPS.get(nodeid.split("::", 1)[0].rsplit("/", 1)[-1], nodeid)

    return FileGroups(config, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Azurite:
    port: int
    blob_url: str
    connection_string: str

    def container(self, name: str):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string).get_container_client(name)


def start_process(args, **kwargs) -> subprocess.Popen:
    """Start a helper process in its own process group, so stopping it stops its children."""
    return subprocess.Popen(args, start_new_session=True, **kwargs)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def azurite():
    """A fresh in-memory Azurite blob service on a free port, for the whole session."""
    if not AZURITE_BIN.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE_BIN}: run `make setup`")
    from site_backup.credentials import azurite_connection_string

    port = free_port()
    proc = start_process(
        [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/devstoreaccount1"
        yield Azurite(port, url, azurite_connection_string(url))
    finally:
        stop_process(proc)


class TestTokenCredential:
    """A TokenCredential like azure-identity's, handing out tokens Azurite accepts."""

    __test__ = False  # not a test class
    tokens_issued = 0

    def __init__(self, *args, **kwargs):
        pass

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        type(self).tokens_issued += 1
        return AccessToken(*unsigned_storage_token())

    def close(self):
        pass


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory):
    """A fresh in-memory Azurite over HTTPS that accepts Entra ID bearer tokens; yields
    (blob URL, the CA certificate to trust)."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("azurite-tls"))
    port = free_port()
    proc = start_process(
        [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--disableTelemetry", "--silent", "--oauth", "basic", "--cert", str(cert),
         "--key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"https://127.0.0.1:{port}/devstoreaccount1", cert
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def token_endpoint():
    """A managed identity endpoint (App Service style) for DefaultAzureCredential in other
    processes; yields the environment variables that point at it."""
    endpoint = TokenEndpoint()
    try:
        yield endpoint.environment()
    finally:
        endpoint.close()


def read_with_token(blob_url: str, cert, name: str) -> dict[str, bytes]:
    """Every blob of a container of the HTTPS Azurite, read with an Entra ID token."""
    from azure.storage.blob import ContainerClient

    container = ContainerClient(blob_url, name, credential=TestTokenCredential(), connection_verify=str(cert))
    return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}


@pytest.fixture
def entra_storage(azurite_oauth, monkeypatch):
    """The flows' storage settings: AZURE_STORAGE_ACCOUNT_URL with DefaultAzureCredential,
    which hands out tokens the HTTPS Azurite accepts."""
    import azure.identity

    from site_backup.accounts import _account

    url, cert = azurite_oauth
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", TestTokenCredential)
    _account.cache_clear()
    yield url
    _account.cache_clear()


@pytest.fixture
def storage(azurite, monkeypatch):
    """The flow's storage settings point at the test Azurite."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return azurite


HARNESS_SERVICES_OFF = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
                        for name in ("TASK_RUN_RECORDER", "EVENT_PERSISTER", "EVENT_LOGGER", "TRIGGERS", "SCHEDULER",
                                     "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS",
                                     "REPOSSESSOR", "CLEANUP_RECONCILER", "DB_VACUUM")}


@pytest.fixture(scope="session")
def prefect_database(tmp_path_factory) -> Path:
    """A Prefect database migrated to the installed Prefect's schema, made once for all test
    processes of the run: a server that starts on a copy skips its migrations, half of its start's CPU."""
    import prefect

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's, for every process
    template = shared / f"prefect-{prefect.__version__}.db"
    with open(shared / "prefect-database.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other processes wait until it is made
        if not template.exists():
            building = shared / "prefect-building.db"
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(shared / "prefect-database-home"),
                       PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{building}")
            done = subprocess.run([str(PROJECT / ".venv" / "bin" / "prefect"), "server", "database", "upgrade", "-y"],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            building.rename(template)
    return template


def server_home(tmp_path_factory, prefect_database: Path) -> Path:
    """A PREFECT_HOME for a `prefect server start`, its database a copy of the migrated one."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    shutil.copyfile(prefect_database, home / "prefect.db")
    return home


@pytest.fixture(scope="session")
def prefect_server(prefect_database):
    """One temporary Prefect server for the session; yields its API URL."""
    import prefect.testing.utilities
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    def seeded_folder() -> str:  # the harness's database folder, holding a copy of the migrated database
        folder = tempfile.mkdtemp(prefix="prefect-harness-")
        shutil.copyfile(prefect_database, os.path.join(folder, "prefect-test.db"))
        return folder

    with contextlib.ExitStack() as harness:
        # The harness makes its database in a new folder (prefect.testing.utilities.mkdtemp);
        # should that name change, the server migrates a new database as before, only slower.
        harness.enter_context(pytest.MonkeyPatch.context()).setattr(prefect.testing.utilities, "mkdtemp",
                                                                     seeded_folder)
        # Its runs are started and ended by the tests themselves (the deployment tests' server
        # keeps every service): no test reads its events or task runs, nor needs it to schedule,
        # mark late, cancel or clean up runs. Without those loops it spends its CPU on the API.
        os.environ.update(HARNESS_SERVICES_OFF)
        try:
            harness.enter_context(prefect_test_harness(server_startup_timeout=180))
        finally:  # the servers tests start themselves keep them, even when this one failed
            for name in HARNESS_SERVICES_OFF:
                os.environ.pop(name, None)
        url = PREFECT_API_URL.value()
        # The command-line runs the tests start use it too: without PREFECT_API_URL each would
        # start a temporary server of its own (10-30 s, and left running when a test kills it).
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            # The harness drains them without a deadline; one fresh-clone run hung there
            # after every test had passed. Drained here first, a stuck one costs 30 s.
            drain_prefect_workers()


def drain_prefect_workers() -> None:
    """Send what this process's Prefect event and log workers hold, each within 30 s, and
    stop them (the next event or log starts a new one): before the server they send to stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


# Session fixtures stopped as soon as the next test of the process does not use them (name ->
# stop), not at the session's end: with the deployment stack's server and worker still
# running, the tests after its files in the same process used about 1.6 times the CPU.
_STOP_EARLY: dict = {}
_STOPPED: set = set()


@pytest.hookimpl(trylast=True)  # after the narrower fixtures of `item` (the HTTP API over the stack) ended
def pytest_runtest_teardown(item, nextitem):
    for name in list(_STOP_EARLY):
        if name in item.fixturenames and (nextitem is None or name not in nextitem.fixturenames):
            _STOPPED.add(name)
            _STOP_EARLY.pop(name)()


def pytest_runtest_setup(item):
    stopped = _STOPPED & set(item.fixturenames)
    if stopped:
        pytest.fail(f"{item.nodeid} uses {sorted(stopped)}, stopped after the tests before it: the files that "
                    "use it must run together, one after another (GROUPS and LONGEST_FIRST)")


@pytest.fixture(scope="session")
def stack(azurite, tmp_path_factory, prefect_database):
    """A Prefect server with the repository's deployments and a process worker, shared by
    test_deployment.py and test_http_deployment.py (one xdist group: one process, once)."""
    from tests.deployment_stack import deployment_stack

    with contextlib.ExitStack() as running:
        started = running.enter_context(
            deployment_stack(azurite, tmp_path_factory, server_home(tmp_path_factory, prefect_database)))
        running.callback(drain_prefect_workers)  # first, while the server still answers
        _STOP_EARLY["stack"] = running.close
        yield started
        _STOP_EARLY.pop("stack", None)


@pytest.fixture
def checkpoints(prefect_server, tmp_path):
    """Result storage (the checkpoint store) private to this test."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    path = tmp_path / "checkpoints"
    with temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(path)}):
        yield path


@pytest.fixture
def container_name() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def flow_run_messages(run, until: str = "Backup completed", tries: int = 50) -> tuple:
    """Call `run()` (a flow called with return_state=True) with the flow's INFO lines on, as
    a deployment run logs them (the suite logs warnings only), and return its state and the
    log messages the server has for it once one starts with `until` (logs reach the server
    in the background), or after `tries` polls."""
    import asyncio
    import logging

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flow_runs = logging.getLogger("prefect.flow_runs")
    level = flow_runs.level
    flow_runs.setLevel(logging.INFO)
    try:
        state = run()
    finally:
        flow_runs.setLevel(level)

    async def messages() -> list[str]:
        async with get_client() as client:
            for _ in range(tries):
                logs = await client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
                text = [log.message for log in logs]
                if any(m.startswith(until) for m in text):
                    break
                await asyncio.sleep(0.2)
            return text

    return state, asyncio.run(messages())


def assert_said_stopped(logs: list, artifacts: dict, total: int, other_warnings: tuple[str, ...] = ()) -> None:
    """A stopped backup run's log records (as the API returns them) hold one WARNING, the
    cancel line (besides any starting with one of `other_warnings`), and no ERROR; its
    artifacts (by key) say cancelled and stopped."""
    import logging
    import re

    shown = "\n".join(f"{logging.getLevelName(log.level)} {log.message[:300]}" for log in logs)
    warnings = [log.message for log in logs if log.level == logging.WARNING and not (
        other_warnings and log.message.startswith(other_warnings))]
    assert len(warnings) == 1, shown
    line = re.fullmatch(r"Backup cancelled: (\d+) of (\d+)(\+?) files stored; run again or Retry to resume", warnings[0])
    assert line and int(line.group(1)) <= int(line.group(2)) <= total, shown
    assert line.group(3) or int(line.group(2)) == total, shown  # "+": the walk had not ended
    assert not [log for log in logs if log.level >= logging.ERROR], shown
    summary = artifacts["backup-summary"]
    assert summary.description.startswith("Backup cancelled") and "| **Outcome** | cancelled |" in summary.data, \
        summary
    progress = artifacts["backup-progress"]
    assert progress.description.startswith("stopped at ") and "counting" not in progress.description, \
        progress.description


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by '/'-separated relative path."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def read_container(azurite: Azurite, name: str, prefix: str = "") -> dict[str, bytes]:
    container = azurite.container(name)
    out = {}
    for blob in container.list_blobs(name_starts_with=prefix or None):
        key = blob.name[len(prefix) + 1 :] if prefix else blob.name
        out[key] = container.download_blob(blob.name).readall()
    return out


@pytest.fixture
def project_python():
    return sys.executable


@pytest.fixture
def make_tree(tmp_path):
    """Write {relative path: bytes} under a fresh folder and return it."""

    def make(files: dict[str, bytes], name: str = "site") -> Path:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    yield make
    shutil.rmtree(tmp_path, ignore_errors=True)
