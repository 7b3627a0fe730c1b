"""Scale-out: the copy tasks run on an existing dask.distributed cluster with two worker
processes (a scheduler and workers started here, as on separate machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT, free_port, read_container, start_process, stop_process, wait_for_port

pytest.importorskip("prefect_dask")


@pytest.fixture
def dask_cluster(storage, prefect_server, tmp_path):
    """A scheduler and two single-threaded worker processes. The workers get the storage
    and Prefect settings, as machines running copy tasks would."""
    port = free_port()
    env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=storage.connection_string, PREFECT_API_URL=prefect_server,
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / "checkpoints"), PYTHONPATH=str(PROJECT))
    bin_dir = os.path.dirname(sys.executable)
    procs = [start_process([os.path.join(bin_dir, "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                            "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for_port(port, 60)
        address = f"tcp://127.0.0.1:{port}"
        procs.append(start_process([os.path.join(bin_dir, "dask"), "worker", address, "--nworkers", "2",
                                    "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            yield address, client, env
    finally:
        for p in reversed(procs):
            stop_process(p)


def test_copy_tasks_run_on_an_existing_dask_cluster(dask_cluster, storage, make_tree, container_name):
    address, client, env = dask_cluster
    files = {f"part{i % 4}/f{i:03d}.txt": f"content {i}".encode() * 50 for i in range(200)}
    root = make_tree(files)
    script = str(PROJECT / "flows" / "backup_site_content.py")
    done = subprocess.run([sys.executable, script, str(root), "--container", container_name, "--json",
                           "--task-runner", "dask", "--dask-address", address, "--files-per-batch", "20"],
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["files_uploaded"] == 200 and summary["batches"] >= 4
    assert read_container(storage, container_name) == files
    # Both worker processes ran copy tasks: each imported the copy code.
    ran = client.run(lambda: "site_backup.copy" in sys.modules)
    assert len(ran) == 2 and all(ran.values()), ran
