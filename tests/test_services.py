"""The services `make` starts, in a copy of this checkout: one Prefect home in the clone,
the server's output in .run/server.log, a profile that sends command-line runs and
`prefect` commands to the running server, `prefect deploy --all` as typed (the default
pool of prefect.yaml), another pool through `WORK_POOL` and `--pool`, and `make stop`
ending only the processes it started."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import PROJECT, free_port

DEPLOYMENTS = {"backup_site_content/local", "backup_site_content/shard", "backup_site_sharded/local",
               "verify_backup/local", "restore_site_content/local", "prune_backups/local"}


def run(args, clone, env, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def clone(tmp_path_factory, azurite, prefect_database):
    """This checkout's tracked files (as they are now) with the shared installs linked in, and
    a server started by its scripts; `make stop` at the end."""
    clone = tmp_path_factory.mktemp("services") / "clone"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (PROJECT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, clone / name)
    for name in ("prefect.toml", "scripts/services.sh"):  # new files, maybe not yet in git's index
        shutil.copy2(PROJECT / name, clone / name)
    for name in (".venv", ".azurite"):
        (clone / name).symlink_to((PROJECT / name).resolve())
    # The database as a server's first start leaves it (migrated): the README's fresh clone
    # test has the first start, and a migration costs a start about 10 s of CPU.
    (clone / ".prefect").mkdir()
    shutil.copyfile(prefect_database, clone / ".prefect" / "prefect.db")
    # As a user's shell: no Prefect settings at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AZURE_STORAGE", "WORK_POOL"))}
    port = free_port()
    env.update(PREFECT_PORT=str(port), AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string)
    try:
        started = run(["scripts/start-prefect-server"], clone, env)
        yield {"path": clone, "env": env, "api_url": f"http://127.0.0.1:{port}/api", "started": started.stdout}
    finally:
        stopped = subprocess.run(["scripts/stop"], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
        print(stopped.stdout, stopped.stderr)


def call(api_url, fn):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(go())


def deployments(api_url) -> dict[str, tuple[str, str]]:
    """Each deployment, named as `prefect deploy --name` takes it: its pool and description."""
    async def read(client):
        flows = {f.id: f.name.replace("-", "_") for f in await client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}": (d.work_pool_name, d.description)
                for d in await client.read_deployments()}

    return call(api_url, read)


def test_the_server_logs_to_run_and_the_profile_points_at_it(clone):
    log = clone["path"] / ".run" / "server.log"
    assert log.stat().st_size > 0, "the server's output was discarded"
    profile = (clone["path"] / ".prefect" / "profiles.toml").read_text()
    assert f'PREFECT_API_URL = "{clone["api_url"]}"' in profile
    assert "log in .run/server.log" in clone["started"]


def test_prefect_deploy_all_as_typed_uses_the_pool_of_prefect_yaml(clone):
    env = clone["env"]  # no PREFECT_API_URL: the clone's profile names the server
    run([".venv/bin/prefect", "work-pool", "create", "site-backup", "--type", "process"], clone["path"], env)
    run([".venv/bin/prefect", "--no-prompt", "deploy", "--all"], clone["path"], env)
    found = deployments(clone["api_url"])
    assert set(found) == DEPLOYMENTS, found
    assert {pool for pool, _ in found.values()} == {"site-backup"}
    assert all(description for _, description in found.values()), found


def test_prefect_deploy_pool_and_make_deploy_work_pool_choose_another(clone):
    env = clone["env"]
    run([".venv/bin/prefect", "work-pool", "create", "third", "--type", "process"], clone["path"], env)
    run([".venv/bin/prefect", "--no-prompt", "deploy", "--name", "verify-backup/local", "--pool", "third"],
        clone["path"], env)
    assert deployments(clone["api_url"])["verify_backup/local"][0] == "third"
    run(["scripts/deploy"], clone["path"], dict(env, WORK_POOL="other"))
    found = deployments(clone["api_url"])
    assert {pool for pool, _ in found.values()} == {"other"}, found


def test_a_command_line_run_uses_the_running_server_and_the_clones_home(clone):
    env = clone["env"]
    done = run([".venv/bin/python", "flows/backup_site_content.py", "sample-site", "--container", "cli-run"],
               clone["path"], env)
    assert "Outcome:      completed" in done.stdout

    async def runs(client):
        return await client.read_flow_runs()

    assert any(r.parameters.get("container") == "cli-run" for r in call(clone["api_url"], runs))
    assert any((clone["path"] / ".prefect" / "storage").iterdir()), "checkpoints are not in the clone's home"


def test_the_worker_shares_the_home_and_stop_ends_only_what_it_started(clone):
    path, env = clone["path"], clone["env"]
    run(["scripts/start-worker"], path, env)
    pid = int((path / ".run" / "worker.pid").read_text().split()[0])
    # Until the background job has exec'd the worker, /proc shows the forked shell's environment.
    deadline = time.monotonic() + 30
    while b"\0worker\0start\0" not in open(f"/proc/{pid}/cmdline", "rb").read():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.05)
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    assert f"PREFECT_HOME={path}/.prefect".encode() in environ
    # A pid file whose process is gone and whose number now belongs to another process.
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (path / ".run" / "azurite.pid").write_text(f"{other.pid}\nMon Jan  1 00:00:00 2024\n")
        stopped = run(["scripts/stop"], path, env)
        assert other.poll() is None, "make stop killed a process it did not start"
        assert "is no longer the process make started; left alone" in stopped.stdout
        assert f"stopped the worker (pid {pid})" in stopped.stdout and "stopped the Prefect server" in stopped.stdout
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{pid}")
        assert not (path / ".prefect" / "profiles.toml").exists()
    finally:
        other.kill()
        other.wait()
