"""Durability for real: SIGKILL part-way and resume, injected storage faults, permanent
errors that fail fast, overlapping runs. Storage is Azurite behind tests/faultproxy.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from flows.backup_site_content import backup_site_content
from site_backup.credentials import azurite_connection_string
from tests.conftest import PROJECT, read_container, read_with_token, start_process, stop_process
from tests.faultproxy import FaultProxy

SCRIPT = str(PROJECT / "flows" / "backup_site_content.py")


@pytest.fixture
def proxy(azurite):
    with FaultProxy(azurite.port) as p:
        yield p


def via(proxy) -> str:
    return azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1")


def sas_via(port: int) -> str:
    """A connection string with an account SAS (read, write, list, create, add) for Azurite at `port`."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from site_backup.credentials import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, list=True, create=True, add=True),
                               expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;SharedAccessSignature={sas}"


@pytest.fixture(params=["key", "sas", "entra"])
def signed_in(request, azurite):
    """Storage behind a fault proxy as a command-line run reaches it, in each sign-in mode:
    (mode, proxy, the run's storage environment, a function reading a container back).
    Entra ID: the HTTPS Azurite (--oauth basic), tokens from DefaultAzureCredential through
    a managed identity endpoint."""
    if request.param == "entra":
        url, cert = request.getfixturevalue("azurite_oauth")
        identity = request.getfixturevalue("token_endpoint")
        with FaultProxy(int(url.split(":")[2].split("/")[0]), tls=(cert, cert.parent / "key.pem")) as p:
            env = {"AZURE_STORAGE_CONNECTION_STRING": None, "REQUESTS_CA_BUNDLE": str(cert), **identity,
                   "AZURE_STORAGE_ACCOUNT_URL": f"https://127.0.0.1:{p.port}/devstoreaccount1"}
            yield "entra", p, env, lambda name: read_with_token(url, cert, name)
        return
    with FaultProxy(azurite.port) as p:
        connection = via(p) if request.param == "key" else sas_via(p.port)
        yield request.param, p, {"AZURE_STORAGE_CONNECTION_STRING": connection}, lambda name: read_container(azurite,
                                                                                                              name)


def tree(make_tree, n, seed=0, big=None):
    files = {f"d{i % 13:02d}/file-{i:04d}.dat": hashlib.sha256(f"{seed}-{i}".encode()).digest() * (20 + i % 300)
             for i in range(n)}
    if big:
        files["big/archive.bin"] = os.urandom(big)
    return files, make_tree(files)


def cli(root, container, env, *extra):
    return [sys.executable, SCRIPT, str(root), "--container", container, "--json", "--no-progress", *extra]


def cli_env(prefect_server, connection_string, checkpoints, storage: dict | None = None):
    """The environment of a command-line run; `storage` (None to remove a variable)
    replaces the connection string."""
    env = dict(os.environ)
    env.update(PREFECT_API_URL=prefect_server, AZURE_STORAGE_CONNECTION_STRING=connection_string,
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))
    for name, value in (storage or {}).items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    return env


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_killed_run_resumes_without_resending_finished_files(signed_in, prefect_server, make_tree, tmp_path,
                                                              container_name):
    mode, proxy, storage, read_stored = signed_in
    files, root = tree(make_tree, 300)
    proxy.latency = 0.04  # slow enough to kill it part-way
    env = cli_env(prefect_server, "", tmp_path / "checkpoints", storage)
    args = cli(root, container_name, env, "--files-per-batch", "25", "--parallel-batches", "2",
               "--files-in-flight", "2")
    in_flight = 2 * 2

    first = start_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: proxy.landed() >= 120 or first.poll() is not None, 180, "40% of the blobs")
        assert first.poll() is None, "the first run finished before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # the whole process group, no clean-up
        first.wait(30)
    finally:
        stop_process(first)
    proxy.wait_until_idle()  # requests it was forwarding at the kill have landed
    landed_first = dict(proxy.writes)
    assert 120 <= len(landed_first) < 300

    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)

    resent = sorted(name for name, n in proxy.writes.items() if n > 1)
    assert len(resent) <= in_flight, resent
    assert summary["files_uploaded"] + summary["files_unchanged"] == 300 and summary["files_failed"] == 0
    assert summary["files_uploaded"] <= 300 - len(landed_first) + in_flight
    assert summary["batches_from_checkpoint"] >= 1
    assert read_stored(container_name) == files
    print(f"\nkill test ({mode}): {len(landed_first)} blobs written before the kill, second run uploaded "
          f"{summary['files_uploaded']}, re-sent {len(resent)}, {summary['batches_from_checkpoint']} of "
          f"{summary['batches']} batches from checkpoints")


def test_injected_faults_are_absorbed_and_every_blob_is_intact(azurite, proxy, checkpoints, monkeypatch, make_tree,
                                                               container_name):
    files, root = tree(make_tree, 300, seed=1, big=70 * 2**20 + 5)
    azurite.container(container_name).create_container()
    proxy.busy_rate, proxy.timeout_rate, proxy.drop_rate, proxy.latency = 0.15, 0.05, 0.05, 0.002
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    started = time.monotonic()
    summary = backup_site_content(str(root), container=container_name)
    took = time.monotonic() - started
    assert summary.files_failed == 0, summary.failed
    assert summary.files_uploaded == len(files) and summary.bytes_uploaded == sum(map(len, files.values()))
    assert proxy.injected() >= 40 and summary.retries >= proxy.injected() * 0.8
    stored = read_container(azurite, container_name)
    assert stored == files
    container = azurite.container(container_name)
    for blob in container.list_blobs():
        assert bytes(blob.content_settings.content_md5) == hashlib.md5(stored[blob.name]).digest(), blob.name
    print(f"\nfault test: {dict(proxy.faults)} injected into {proxy.requests} requests, "
          f"{summary.retries} retries counted, {took:.1f} s")


def test_far_from_storage_a_run_copies_more_files_at_once_and_says_how_many(azurite, proxy, checkpoints, monkeypatch,
                                                                           make_tree, container_name):
    """Storage 50 ms away: the level rises past the 16 files a run starts with (the proxy
    sees more requests at once) and the summary and the log say where it ended."""
    from tests.conftest import flow_run_messages

    files, root = tree(make_tree, 600, seed=3)
    proxy.latency = 0.05
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    state, messages = flow_run_messages(lambda: backup_site_content(str(root), container=container_name,
                                                                    return_state=True))
    summary = state.result()
    assert summary.files_uploaded == len(files) and summary.files_failed == 0
    assert summary.files_in_flight_peak >= 32 and proxy.most_in_flight > 16, (summary, proxy.most_in_flight)
    assert 16 <= summary.files_in_flight <= summary.files_in_flight_peak <= 64
    line = f"{summary.files_in_flight} files in flight at the end ({summary.files_in_flight_peak} at most)"
    assert any(m.startswith("Backup completed") and line in m for m in messages), messages
    assert re.search(rf"^In flight: +{summary.files_in_flight} files at the end, {summary.files_in_flight_peak} at most", summary.to_text(), re.M)
    assert read_container(azurite, container_name) == files


def test_storage_answering_503_brings_the_files_in_flight_down_and_every_blob_is_intact(
        azurite, proxy, checkpoints, monkeypatch, make_tree, container_name):
    files, root = tree(make_tree, 150, seed=4)
    proxy.busy_rate, proxy.latency = 0.2, 0.002
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    summary = backup_site_content(str(root), container=container_name)
    assert summary.files_failed == 0 and proxy.injected() >= 20
    assert summary.files_in_flight < 16 <= summary.files_in_flight_peak, summary  # halved, at least once
    assert read_container(azurite, container_name) == files


def test_rejected_writes_fail_fast_with_the_reason(azurite, proxy, checkpoints, monkeypatch, make_tree, container_name):
    files, root = tree(make_tree, 40, seed=2)
    azurite.container(container_name).create_container()
    proxy.blob_write_status = 403
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    started = time.monotonic()
    summary = backup_site_content(str(root), container=container_name)
    assert time.monotonic() - started < 30
    assert summary.files_failed == 40 and summary.outcome == "incomplete"
    assert "403 AuthenticationFailed" in summary.failed[0].reason and "check the account key" in summary.failed[0].reason


def test_container_deleted_mid_run_fails_fast(azurite, proxy, prefect_server, make_tree, tmp_path, container_name):
    files, root = tree(make_tree, 200, seed=3)
    proxy.latency = 0.03
    env = cli_env(prefect_server, via(proxy), tmp_path / "checkpoints")
    run = start_process(cli(root, container_name, env, "--parallel-batches", "2", "--files-in-flight", "2"),
                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proxy.landed() >= 30, 120, "some blobs")
        azurite.container(container_name).delete_container()
        out, err = run.communicate(timeout=90)
    finally:
        stop_process(run)
    assert run.returncode == 1, err[-3000:]
    summary = json.loads(out)
    assert summary["files_failed"] >= 100
    assert any("ContainerNotFound" in p["reason"] and "re-create" in p["reason"] for p in summary["failed"])


def test_overlapping_runs_on_one_destination(azurite, prefect_server, make_tree, tmp_path, container_name):
    files, root = tree(make_tree, 200, seed=4, big=9 * 2**20)
    runs = []
    for i in range(2):
        env = cli_env(prefect_server, azurite.connection_string, tmp_path / f"checkpoints-{i}")
        runs.append(start_process(cli(root, container_name, env), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
    try:
        results = [r.communicate(timeout=300) for r in runs]
    finally:
        for r in runs:
            stop_process(r)
    for run, (out, err) in zip(runs, results):
        assert run.returncode == 0, err[-3000:]
        s = json.loads(out)
        assert s["files_uploaded"] + s["files_unchanged"] == len(files) and s["files_failed"] == 0
    assert read_container(azurite, container_name) == files


@pytest.mark.parametrize("too_large", [False, True], ids=["flat-listing", "past-its-limit"])
def test_a_run_without_checkpoints_compares_with_listings_not_a_request_per_file(too_large, azurite, proxy,
                                                                                 checkpoints, monkeypatch, make_tree,
                                                                                 container_name):
    # A fresh worker, --refresh, or a tree first copied by another tool: no checkpoint says
    # what is stored, so the copies compare with the run's flat listing of the destination
    # (5,000 names a request), or past its limit with a listing per folder, rather than
    # sending a request per file, which storage 5-50 ms away turns into minutes.
    files, root = tree(make_tree, 600, seed=3)
    proxy.latency = 0.025
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", via(proxy))
    backup_site_content(str(root), container=container_name)
    if too_large:
        monkeypatch.setattr("site_backup.remote.LISTED_AT_MOST", 599)  # one blob short of the tree
    before, logged = proxy.requests, len(proxy.log)
    again = backup_site_content(str(root), container=container_name, refresh=True)
    assert (again.files_unchanged, again.files_uploaded) == (600, 0)
    listings = [entry for entry in proxy.log[logged:] if entry == ("GET", container_name, "list")]
    # One page to see the prefix is not empty, the flat listing (given up at its limit, in
    # one page here), then, past the limit only, each of the 13 folders.
    assert len(listings) == (2 + 13 if too_large else 2), proxy.log[logged:]
    # Besides: Create Container, its properties; history: the run's lock (Put Blob, Lease
    # Blob, Delete Blob, and one List Blobs of the locks for an overlapping prune) and its
    # manifest (Put Block, Put Block List).
    assert proxy.requests - before == len(listings) + 2 + 6, proxy.log[logged:]


