"""One retry policy for every storage request (site_backup/retry.py): storage that stops
answering ends a run within its deadline, with a clear error; a stopped run leaves only
consistent checkpoints; 503s and dropped connections are absorbed in every sign-in mode.
Storage is Azurite behind tests/faultproxy.py, which can go silent or refuse part-way."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from email.utils import formatdate

import pytest

from flows.backup_site_content import backup_site_content
from flows.restore_site_content import restore_site_content
from flows.verify_backup import verify_backup
from site_backup.accounts import _account
from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY, azurite_connection_string
from site_backup.retry import (
    PER_REQUEST,
    STOP,
    RetryPolicy,
    RunStopped,
    StorageBudget,
    StorageUnavailable,
    backoff,
    request_stop,
)
from site_backup.storage import RetryLog
from site_backup.summary import RunFailed
from tests.conftest import assert_said_stopped, read_container, read_tree, start_process, stop_process
from tests.faultproxy import FaultProxy
from tests.test_durability import cli, cli_env, sas_via, tree, wait_until

SHORT = 3.0  # --storage-timeout in these tests: seconds


@pytest.fixture
def proxy(azurite):
    with FaultProxy(azurite.port) as p:
        yield p


@pytest.fixture(autouse=True)
def fresh_accounts():
    _account.cache_clear()
    yield
    _account.cache_clear()
    STOP.clear()  # a test that stopped "the run" stopped this process's runs


def via(proxy) -> str:
    return azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")


def only_stored_files_reported(summary: dict, files: dict[str, bytes], stored: dict[str, bytes]) -> None:
    """Every file the summary does not list as failed is stored, byte for byte."""
    failed = {p["path"] for p in summary["failed"]}
    assert summary["files_uploaded"] + summary["files_unchanged"] == len(files) - len(failed)
    for path, data in files.items():
        if path not in failed:
            assert stored.get(path) == data, path


# --- the policy itself -----------------------------------------------------------------

def test_the_default_fails_a_run_within_two_minutes_of_the_last_answer():
    from site_backup.fastblob import DirectBlobs, SharedKey

    policy = RetryPolicy()
    assert policy.worst_case_seconds() <= 120
    # A request against storage that accepts and never answers, with the default policy,
    # 57 s after the last answer, requests failing since (the clock moved back stands for
    # those seconds): the run ends at the deadline, 60 s after that answer.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/devstoreaccount1"
        blobs = DirectBlobs(url, SharedKey(AZURITE_ACCOUNT, AZURITE_KEY), "2025-11-05", _settings())
        silent = StorageBudget(policy, url)
        silent.last_answer -= policy.storage_timeout - 3
        silent.troubled = True
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="storage timeout of 60 s"):
            blobs.put("c", "a.txt", b"x", b"\0" * 16, "text/plain", {}, RetryLog(silent))
        silence = policy.storage_timeout - 3 + time.monotonic() - started
    assert policy.storage_timeout <= silence <= 120, silence
    budget = StorageBudget(policy)
    assert budget.timeout() == pytest.approx(policy.storage_timeout, abs=0.1)  # just answered: all of it
    budget.last_answer -= policy.storage_timeout - 10  # storage silent for 50 s
    assert 9 <= budget.timeout() <= 10  # a request starting now gives up by the deadline
    assert budget.connect_timeout() <= 10
    budget.last_answer -= 11
    budget.check()  # no request failed: time spent reading files is not silence
    budget.troubled = True  # a request failed since the last answer
    with pytest.raises(StorageUnavailable, match="no useful answer within the storage timeout of 60 s.* came 61 s ago"):
        budget.check()


def test_time_without_requests_does_not_count_against_the_deadline():
    # Hashing a large local file for minutes between two requests is no silence of storage.
    budget = StorageBudget(RetryPolicy(storage_timeout=5))
    budget.last_answer -= 60
    budget.check()
    budget.begin()  # nothing else in flight, nothing failing: the deadline starts now
    assert budget.timeout() == pytest.approx(5, abs=0.1)
    budget.end()


def test_backoff_is_exponential_with_full_jitter_and_never_past_the_deadline():
    waits = [backoff(3, 100) for _ in range(200)]
    assert all(0 <= w <= 8 for w in waits) and len({round(w, 3) for w in waits}) > 150
    assert all(backoff(20, 100) <= 30 for _ in range(50))
    assert all(backoff(5, 0.2) <= 0.2 for _ in range(50))


def test_the_budget_is_the_runs_and_successes_earn_retries_back(monkeypatch):
    monkeypatch.setattr("site_backup.retry.backoff", lambda retry, limit: 0)
    budget = StorageBudget(RetryPolicy(retries=3), "http://storage")
    assert all(budget.retry(0, "503 ServerBusy", answered=True) for _ in range(3))  # three files, one retry each
    budget.answered()
    budget.answered()  # two successes earn one retry back
    assert budget.retry(0, "503 ServerBusy", answered=True)
    spent = r"http://storage stopped answering \(all 3 retries of the run spent\).*4 requests were tried again"
    with pytest.raises(StorageUnavailable, match=spent):
        budget.retry(0, "503 ServerBusy", answered=True)
    with pytest.raises(StorageUnavailable):
        budget.check()  # the run is over for every request


def test_an_answered_error_fails_its_request_after_a_few_retries_an_unanswered_one_does_not(monkeypatch):
    monkeypatch.setattr("site_backup.retry.backoff", lambda retry, limit: 0)
    budget = StorageBudget(RetryPolicy(retries=1000))
    assert not budget.retry(PER_REQUEST, "500 InternalError", answered=True)
    assert budget.retry(PER_REQUEST * 10, "cannot connect: Connection refused", answered=False)


def test_refused_connections_end_the_run_at_the_deadline_not_the_file():
    from site_backup.fastblob import DirectBlobs, SharedKey

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/devstoreaccount1"
    blobs = DirectBlobs(url, SharedKey(AZURITE_ACCOUNT, AZURITE_KEY), "2025-11-05", _settings())
    budget = StorageBudget(RetryPolicy(retries=1000, storage_timeout=1.5), url)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as failed:
        blobs.put("c", "a.txt", b"x", b"\0" * 16, "text/plain", {}, RetryLog(budget))
    assert 1.4 <= time.monotonic() - started <= 3
    message = str(failed.value)
    assert url in message and "Connection refused" in message and "storage timeout of 1.5 s" in message
    assert "--storage-timeout" in message


def test_a_stop_wakes_a_request_waiting_for_an_answer():
    from site_backup.fastblob import DirectBlobs, SharedKey

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts (the kernel does), never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/devstoreaccount1"
        blobs = DirectBlobs(url, SharedKey(AZURITE_ACCOUNT, AZURITE_KEY), "2025-11-05", _settings())
        errors = []

        def put():
            try:
                blobs.put("c", "a.txt", b"x", b"\0" * 16, "text/plain", {}, RetryLog(StorageBudget(RetryPolicy())))
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors.append(exc)

        waiting = threading.Thread(target=put)
        waiting.start()
        listener.settimeout(30)
        server_side, _ = listener.accept()
        received = b""
        while not received.endswith(b"\r\n\r\nx"):  # the whole request: it waits for the answer now
            chunk = server_side.recv(65536)
            assert chunk, received
            received += chunk
        started = time.monotonic()
        request_stop("stopped by SIGTERM")
        waiting.join(5)
        server_side.close()
        assert not waiting.is_alive() and time.monotonic() - started < 1
        assert isinstance(errors[0], RunStopped) and "SIGTERM" in str(errors[0])
    finally:
        listener.close()


def test_storage_that_stops_reading_a_large_upload_is_found_within_the_timeout():
    from site_backup.fastblob import DirectBlobs, SharedKey

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections are accepted by the kernel; nothing reads them
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/devstoreaccount1"
        blobs = DirectBlobs(url, SharedKey(AZURITE_ACCOUNT, AZURITE_KEY), "2025-11-05", _settings())
        budget = StorageBudget(RetryPolicy(storage_timeout=1.5), url)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="timed out"):
            blobs.stage_block("c", "big.bin", "YmxvY2s=", os.urandom(32 * 2**20), RetryLog(budget))
        assert time.monotonic() - started < 6  # the body's pieces fill the buffers, then time out
    finally:
        listener.close()


def _settings():
    from site_backup.accounts import StorageSettings

    return StorageSettings()


# --- storage that goes away part-way ----------------------------------------------------

def test_silent_storage_ends_the_command_line_run_within_the_deadline(azurite, proxy, prefect_server, make_tree,
                                                                      tmp_path, container_name):
    # Before: 146 s after the last answer such a run was still going, and ignored SIGTERM.
    files, root = tree(make_tree, 200)
    proxy.silent_after = 60
    env = cli_env(prefect_server, via(proxy), tmp_path / "checkpoints")
    done = subprocess.run(cli(root, container_name, env, "--storage-timeout", str(SHORT)), env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    after_silence = time.monotonic() - proxy.went_away_at
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "failed", summary
    assert f"127.0.0.1:{proxy.port}" in summary["error"] and "stopped answering" in summary["error"]
    assert "timed out" in summary["error"] and "requests were tried again" in summary["error"]
    assert after_silence < SHORT + 8, after_silence  # the deadline, then the process ends
    only_stored_files_reported(summary, files, read_container(azurite, container_name))
    print(f"\nsilent storage: run ended {after_silence:.1f} s after the last answer (timeout {SHORT} s): "
          f"{summary['error']}")


@pytest.mark.parametrize("path", ["direct", "sdk"])
def test_refused_connections_part_way_end_the_run_not_each_file(azurite, proxy, checkpoints, monkeypatch, make_tree,
                                                                container_name, path):
    # Before: about 11 s per pending file (270 s for 24 files).
    files, root = tree(make_tree, 120, seed=5)
    proxy.refuse_after = 40
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    if path == "sdk":  # behind a proxy (that NO_PROXY bypasses) the SDK sends everything
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(RunFailed) as ended:
        backup_site_content(str(root), container=container_name, storage_timeout=SHORT)
    after = time.monotonic() - proxy.went_away_at
    summary = ended.value.summary
    assert summary.outcome == "failed" and "stopped answering" in summary.error, summary.error
    assert after < SHORT + 4, after
    assert summary.files_failed >= 1 and all("the run ended first" in p.reason for p in summary.failed)
    only_stored_files_reported(summary.model_dump(), files, read_container(azurite, container_name))


def test_restore_and_verify_end_when_storage_goes_silent(azurite, proxy, checkpoints, monkeypatch, make_tree,
                                                         container_name, tmp_path):
    # Before: a restore with storage killed part-way still ran after 600 s.
    files, root = tree(make_tree, 60, seed=6)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    backup_site_content(str(root), container=container_name)
    _account.cache_clear()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    proxy.silent_after = 20  # the checks and the listing answer, then a few downloads
    started = time.monotonic()
    with pytest.raises(RunFailed) as ended:
        restore_site_content(container_name, str(tmp_path / "restored"), storage_timeout=SHORT)
    summary = ended.value.summary
    assert summary.outcome == "failed" and "stopped answering" in summary.error
    assert time.monotonic() - proxy.went_away_at < SHORT + 4
    restored = {p.relative_to(tmp_path / "restored").as_posix(): p.read_bytes()
                for p in (tmp_path / "restored").rglob("*") if p.is_file()}
    assert all(files[path] == data for path, data in restored.items())  # nothing half-written
    assert summary.files_restored == len(restored)

    proxy.silent_after = proxy.requests + 2  # the verify's two checks answer, its listing does not
    with pytest.raises(RunFailed) as ended:
        verify_backup(str(root), container=container_name, storage_timeout=SHORT)
    assert ended.value.summary.outcome == "failed" and ended.value.summary.exit_code == 1
    assert "stopped answering" in ended.value.summary.error
    assert time.monotonic() - started < 4 * (SHORT + 4)


# --- stopping -------------------------------------------------------------------------

def test_sigterm_ends_the_command_line_run_within_10_s_and_a_rerun_resumes(azurite, proxy, prefect_server, make_tree,
                                                                           tmp_path, container_name):
    # Before: the SIGTERM sent to a run with copy threads waiting in socket reads was ignored.
    files, root = tree(make_tree, 240, seed=7)
    proxy.latency = 0.05
    env = cli_env(prefect_server, via(proxy), tmp_path / "checkpoints")
    args = cli(root, container_name, env, "--files-per-batch", "20", "--parallel-batches", "2",
               "--files-in-flight", "4")
    run = start_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proxy.landed() >= 60 or run.poll() is not None, 180, "a quarter of the blobs")
        assert run.poll() is None, "the run finished before it could be stopped"
        proxy.silent_after = proxy.requests  # requests in flight now wait in socket reads: a stalled link
        wait_until(lambda: proxy.requests > proxy.silent_after, 30, "a request held without an answer")
        stopped_at = time.monotonic()
        os.kill(run.pid, signal.SIGTERM)
        out, err = run.communicate(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        stop_process(run)
    assert run.returncode == 143, err[-3000:]
    assert took < 10, took
    lines = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err[-3000:]
    # The flow run as the UI shows it: Cancelled, one WARNING, a `cancelled` summary. (The
    # silent link also kept the lock blob from being deleted, which is said too.)
    state = said_stopped_on_the_server(container_name, len(files), other_warnings=("the run's lock blob",))
    assert state.is_cancelled(), state
    proxy.silent_after, proxy.latency = None, 0
    landed_first = dict(proxy.writes)

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    resent = sorted(name for name, n in proxy.writes.items() if n > 1)
    assert len(resent) <= 8, resent  # at most the files in flight at the stop
    assert summary["files_uploaded"] <= len(files) - len(landed_first) + 8
    assert summary["batches_from_checkpoint"] >= 1
    assert read_container(azurite, container_name) == files
    print(f"\nSIGTERM: exit 143 after {took:.1f} s; {len(landed_first)} blobs before, {len(resent)} re-sent")


def said_stopped_on_the_server(container: str, total: int, timeout: float = 30, other_warnings: tuple[str, ...] = ()):
    """The state of the one backup flow run into `container`, once its log on the server has
    the cancel line, after checking its log and artifacts (conftest.assert_said_stopped)."""
    import asyncio
    import logging

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName,
                                                LogFilter, LogFilterFlowRunId)

    async def read():
        async with get_client() as client:
            runs = [r for r in await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["backup-site-content"])), limit=200)
                if r.parameters.get("container") == container]
            assert len(runs) == 1, runs
            deadline = time.monotonic() + timeout
            while True:  # the run's process sent its last records as it left; the server stores them in the background
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
                if any(log.message.startswith("Backup cancelled") for log in logs) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
            return (await client.read_flow_run(runs[0].id)).state, logs, {a.key: a for a in artifacts}

    state, logs, artifacts = asyncio.run(read())
    assert_said_stopped(sorted(logs, key=lambda log: log.timestamp), artifacts, total, other_warnings)
    return state


# --- faults on every sign-in mode ---------------------------------------------------------

@pytest.fixture(params=["key", "sas", "entra"])
def sign_in(request, azurite, monkeypatch, tmp_path):
    """Storage behind a fault proxy, signed in with an account key, a SAS or Entra ID (the
    HTTPS Azurite with --oauth basic, the proxy speaking TLS with the same certificate)."""
    if request.param == "entra":
        azurite_url, cert = request.getfixturevalue("entra_storage"), request.getfixturevalue("azurite_oauth")[1]
        upstream = int(azurite_url.split(":")[2].split("/")[0])
        with FaultProxy(upstream, tls=(cert, cert.parent / "key.pem")) as p:
            monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", f"https://127.0.0.1:{p.port}/devstoreaccount1")
            _account.cache_clear()
            yield request.param, p
        return
    with FaultProxy(azurite.port) as p:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(p) if request.param == "key" else sas_via(p.port))
        yield request.param, p


def test_503s_and_dropped_connections_are_absorbed_in_every_sign_in_mode(sign_in, azurite, checkpoints, make_tree,
                                                                         container_name):
    from site_backup.accounts import storage_account
    from site_backup.destination import Destination
    from site_backup.fastblob import Bearer, Sas, SharedKey

    mode, proxy = sign_in
    files, root = tree(make_tree, 80, seed=8, big=3 * 2**20 + 5)
    proxy.busy_rate, proxy.timeout_rate, proxy.drop_rate = 0.15, 0.05, 0.05
    summary = backup_site_content(str(root), container=container_name, single_put_mib=1, block_size_mib=1)
    auth = storage_account(Destination(container_name)).signed.auth
    assert isinstance(auth, {"key": SharedKey, "sas": Sas, "entra": Bearer}[mode])
    assert summary.files_failed == 0, summary.failed
    assert summary.files_uploaded == len(files) and proxy.injected() >= 10
    assert summary.retries >= proxy.injected() * 0.8
    if mode != "entra":
        assert read_container(azurite, container_name) == files
    proxy.busy_rate = proxy.timeout_rate = proxy.drop_rate = 0
    assert verify_backup(str(root), container=container_name).outcome == "verified"  # every blob's MD5
    print(f"\n{mode}: {dict(proxy.faults)} injected, {summary.retries} retries counted")


# --- every command builds its budget from its own options ----------------------------------

@pytest.mark.parametrize("history_args", [["--list"], ["--run", "0123", "--check"]])
def test_restore_history_commands_end_at_their_own_storage_timeout(proxy, monkeypatch, capsys, container_name,
                                                                  history_args):
    # Before: --list and --check read the history with the default budget: a silent
    # endpoint held them 60 s whatever --storage-timeout said.
    from site_backup.cli import restore_main

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    proxy.silent_after = 0
    started = time.monotonic()
    code = restore_main(restore_site_content, [container_name, *history_args, "--storage-timeout", "2"])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1, err
    assert took < 2 + 4, took
    assert "stopped answering" in err and "storage timeout of 2 s" in err and err.count("\n") == 1, err


# --- throttling: 429 with Retry-After, on the direct path and the SDK's ----------------------

def test_retry_after_is_waited_for_but_never_past_the_deadline(monkeypatch):
    from site_backup.retry import retry_after_seconds

    assert retry_after_seconds({"Retry-After": "2"}) == 2
    assert retry_after_seconds({"x-ms-retry-after-ms": "250"}) == 0.25
    assert 8 <= retry_after_seconds({"Retry-After": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert retry_after_seconds({"Retry-After": "soon"}) is None and retry_after_seconds({}) is None
    monkeypatch.setattr("site_backup.retry.backoff", lambda retry, limit: 0)
    budget = StorageBudget(RetryPolicy(storage_timeout=1.5))
    started = time.monotonic()
    assert budget.retry(0, "429 TooManyRequests", answered=True, retry_after=0.5)
    assert 0.45 <= time.monotonic() - started < 1
    with pytest.raises(StorageUnavailable, match="429 TooManyRequests"):
        budget.retry(1, "429 TooManyRequests", answered=True, retry_after=3600)  # waits to the deadline, no more
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("path", ["direct", "sdk"])
def test_429_with_retry_after_is_absorbed_by_backup_verify_and_restore(azurite, proxy, checkpoints, monkeypatch,
                                                                       make_tree, container_name, tmp_path, path):
    # Before, on the SDK path (behind a proxy; listings and downloads on every path): the
    # SDK retries no 429, so each throttled request failed its file or ended the run.
    files, root = tree(make_tree, 40, seed=9, big=2 * 2**20 + 5)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    if path == "sdk":
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    proxy.throttle_rate, proxy.throttle_from, proxy.retry_after = 0.2, 3, "1"  # the checks before a run answer
    summary = backup_site_content(str(root), container=container_name, single_put_mib=1, block_size_mib=1)
    assert summary.files_failed == 0, summary.failed
    assert summary.files_uploaded == len(files) and summary.retries >= 5
    proxy.throttle_from = proxy.requests + 3
    assert verify_backup(str(root), container=container_name).outcome == "verified"
    proxy.throttle_from = proxy.requests + 3
    restored = restore_site_content(container_name, str(tmp_path / "restored"))
    assert restored.outcome == "completed" and read_tree(tmp_path / "restored") == files
    assert proxy.faults["429"] >= 10
    assert min(proxy.retry_gaps) >= 0.95, sorted(proxy.retry_gaps)[:5]  # Retry-After: 1 was honoured
    print(f"\n{path}: {proxy.faults['429']} requests answered 429, every one tried again after "
          f"{min(proxy.retry_gaps):.2f}-{max(proxy.retry_gaps):.2f} s")


def test_a_silent_checkpoint_container_ends_the_run_at_the_storage_timeout(azurite, proxy, checkpoints, monkeypatch,
                                                                           make_tree, container_name):
    # Before: the checkpoint container was prepared with the SDK's own timeouts and backoff,
    # whatever --storage-timeout said.
    from prefect_azure.blob_storage import AzureBlobStorageContainer
    from prefect_azure.credentials import AzureBlobStorageCredentials
    from pydantic import SecretStr

    from site_backup.errors import ConfigurationError

    credentials = AzureBlobStorageCredentials(connection_string=SecretStr(via(proxy)))
    AzureBlobStorageContainer(container_name=f"{container_name}-cp", credentials=credentials).save(
        "silent-checkpoints", overwrite=True)
    files, root = tree(make_tree, 10, seed=10)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    proxy.silent_after = 0
    # The destination itself answers: it gets a timeout a loaded 2-core machine keeps (with
    # 3 s its own check once timed out in a fresh-clone run), and the silent container ends
    # the run at that timeout all the same.
    timeout = 10.0
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as refused:
        backup_site_content(str(root), container=container_name, checkpoint_block="silent-checkpoints",
                            storage_timeout=timeout)
    took = time.monotonic() - started
    message = str(refused.value)
    assert f"checkpoint container '{container_name}-cp'" in message and "silent-checkpoints" in message, message
    assert "timed out" in message, message
    assert took < timeout + 10, took
    print(f"\nsilent checkpoint container: refused after {took:.1f} s: {message}")
