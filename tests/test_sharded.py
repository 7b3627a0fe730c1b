"""Sharded backups: the shard rule (rclone's --hash-filter), and the parent flow
backup-site-sharded for real: a Prefect server, the deployments from prefect.yaml, two
process workers on one pool, the children's storage behind the fault proxy (to count
writes and to slow a child enough to kill it), and a Dask run."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from site_backup.errors import ConfigurationError
from site_backup.files import list_batches
from site_backup.history import history_container
from site_backup.shards import Shard, shard_of
from tests.conftest import (HARNESS_SERVICES_OFF, PROJECT, free_port, read_container, server_home, start_process,
                            stop_process)

RCLONE = PROJECT / ".venv" / "bin" / "rclone"


def shard_files(files: dict, n: int, by: str = "path") -> list[set[str]]:
    """The paths of each shard, by the rule."""
    return [{p for p in files if Shard(k, n, by).owns(p)} for k in range(n)]


def listed(root, shard: Shard | None, **kwargs):
    listing = list_batches(str(root), shard=shard, max_files=7, **kwargs)
    return listing, [f.path for b in listing.batches for f in b]


# --- the rule, without Prefect ---------------------------------------------------------


def test_each_file_is_in_exactly_one_shard_and_rclone_hash_filter_picks_the_same(make_tree):
    files = {f"d{i % 5}/sub{i % 3}/File {i}.txt": b"x" for i in range(120)}
    files.update({"Café.html": b"c", "top.txt": b"t"})
    root = make_tree(files)
    assert RCLONE.exists(), f"rclone is not installed at {RCLONE}: run `make setup`"
    seen = []
    for k in range(4):
        _, ours = listed(root, Shard(k, 4))
        done = subprocess.run([str(RCLONE), "lsf", "-R", "--files-only", "--hash-filter", f"{k}/4", str(root)],
                              capture_output=True, text=True, check=True, env=dict(os.environ, RCLONE_CONFIG="/dev/null"))
        assert sorted(ours) == sorted(done.stdout.splitlines()), k
        assert 10 < len(ours) < 60, k  # roughly even
        seen += ours
    assert sorted(seen) == sorted(files)


def test_problems_and_exclusions_are_reported_by_one_shard_only(make_tree):
    files = {f"a/f{i}.log": b"x" for i in range(30)} | {f"b/g{i}.txt": b"y" for i in range(30)}
    root = make_tree(files)
    for i in range(12):
        os.symlink("/etc/hostname", root / "a" / f"link{i}")
    totals = {"files": 0, "skipped": 0, "excluded": 0}
    for by in ("path", "top-level-folder"):
        totals = {"files": 0, "skipped": 0, "excluded": 0}
        for k in range(3):
            listing, paths = listed(root, Shard(k, 3, by), exclude=["*.log"])
            totals["files"] += len(paths)
            totals["skipped"] += len(listing.skipped)
            totals["excluded"] += listing.excluded
        whole, _ = listed(root, None, exclude=["*.log"])
        assert totals == {"files": whole.files, "skipped": len(whole.skipped), "excluded": whole.excluded} \
            == {"files": 30, "skipped": 12, "excluded": 30}, by


def test_top_level_folder_shards_keep_a_folder_together(make_tree):
    files = {f"site{i}/page{j}.html": b"p" for i in range(8) for j in range(5)} | {"robots.txt": b"r"}
    root = make_tree(files)
    for k in range(3):
        _, paths = listed(root, Shard(k, 3, "top-level-folder"))
        tops = {p.split("/")[0] for p in paths}
        assert all(shard_of(top, 3) == k for top in tops)
        assert len(paths) == sum(5 if top.startswith("site") else 1 for top in tops)


def test_a_shard_batches_are_stable_when_other_shards_change(make_tree):
    files = {f"d{i % 4}/f{i:03d}": b"x" * i for i in range(200)}
    root = make_tree(files)
    shard = Shard(1, 3)
    before = [[f.path for f in b] for b in list_batches(str(root), shard=shard, max_files=7).batches]
    again = [[f.path for f in b] for b in list_batches(str(root), shard=shard, max_files=7).batches]
    others = [p for p in files if not shard.owns(p)]
    for p in others[:20]:  # other shards' files change, new ones appear
        (root / p).write_bytes(b"changed")
    for i in range(50):
        if not shard.owns(f"new/n{i}"):
            make_tree({f"new/n{i}": b"n"})
    after = [[f.path for f in b] for b in list_batches(str(root), shard=shard, max_files=7).batches]
    assert before == again == after
    assert len(before) > 4  # natural cuts happen in every shard (the shard hash is not the cut hash)


@pytest.mark.parametrize("text,message", [
    ("4/4", "K counts from 0, so it must be below N (0/4 to 3/4)"),
    ("1/0", "the number of shards N must be 1 to"),
    ("one/4", "write it as K/N, e.g. 0/4"),
    ("-1/4", "write it as K/N"),
])
def test_bad_shards_are_refused_with_the_fix(text, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Shard.parse(text)


def test_bad_shard_on_the_command_line_exits_2_and_names_the_fix(make_tree, capsys):
    from flows.backup_site_content import backup_site_content
    from flows.backup_sharded import backup_site_sharded
    from site_backup.cli import main, sharded_main

    root = str(make_tree({"a": b"a"}))
    assert main(backup_site_content, [root, "--shard", "2/2"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: invalid shard '2/2': K counts from 0, so it must be below N (0/2 to 1/2)"
    assert main(backup_site_content, [root, "--shard-by", "top-level-folder"]) == 2
    assert "give --shard K/N too" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        sharded_main(backup_site_sharded, [root, "--shards", "0"])
    assert exit_.value.code == 2 and "'0' is not a whole number of 1 or more" in capsys.readouterr().err


def test_bad_shard_in_a_start_request_is_a_400_message():
    from site_backup.parameters import BackupParameters, ValidationError, describe

    with pytest.raises(ValidationError) as error:
        BackupParameters(root_directory="/srv", shard="5/3")
    assert describe(error.value) == "shard: invalid shard '5/3': K counts from 0, so it must be below N (0/3 to 2/3)"


def test_a_mirror_of_one_shard_is_refused_before_anything_is_deleted(make_tree, capsys):
    """A shard's walk sees part of the tree: --delete-missing there would delete the other shards' blobs."""
    from flows.backup_site_content import backup_site_content
    from site_backup.cli import main
    from site_backup.parameters import BackupParameters, ValidationError, describe

    root = str(make_tree({"a": b"a"}))
    assert main(backup_site_content, [root, "--shard", "0/2", "--delete-missing"]) == 2
    assert "--delete-missing needs the whole tree, and shard 0/2 sees only part of it" in capsys.readouterr().err
    with pytest.raises(ValidationError) as error:
        BackupParameters(root_directory="/srv", shard="1/2", delete_missing=True)
    assert "leave out --shard, or --delete-missing" in describe(error.value)


def test_the_parent_summary_adds_the_shards_up_and_fails_when_one_failed():
    from site_backup.sharded import combine, shard_row
    from site_backup.summary import BackupSummary, FileProblem

    a = BackupSummary(files_total=3, files_uploaded=2, files_unchanged=1, bytes_total=30, bytes_uploaded=20, batches=2)
    b = BackupSummary(files_total=2, files_failed=1, failed=[FileProblem(path="x", reason="gone")], batches=1,
                      outcome="incomplete")
    rows = [(shard_row(Shard(0, 3), a, state="Completed", attempts=1), a),
            (shard_row(Shard(1, 3), b, state="Incomplete", attempts=1), b)]
    s = combine(rows, root="/r", destination="d", dry_run=False, duration_seconds=1.0)
    assert (s.outcome, s.files_total, s.files_uploaded, s.files_failed, s.bytes_uploaded, s.batches) == \
        ("incomplete", 5, 2, 1, 20, 3)
    rows.append((shard_row(Shard(2, 3), None, state="Crashed", attempts=3, error="ended Crashed"), None))
    s = combine(rows, root="/r", destination="d", dry_run=False, duration_seconds=1.0)
    assert s.outcome == "failed" and s.error == "shard 2/3: ended Crashed" and s.exit_code == 1
    assert [r.shard for r in s.shards] == ["0/3", "1/3", "2/3"] and "| 2/3 |" in s.to_markdown()


def test_the_sharded_command_line_without_a_prefect_server_says_what_to_start(make_tree, capsys, monkeypatch):
    from flows.backup_sharded import backup_site_sharded
    from site_backup import cli

    monkeypatch.setattr(cli, "prefect_settings_for_this_run", lambda: ({}, "starting a temporary server"))
    assert cli.sharded_main(backup_site_sharded, [str(make_tree({"a": b"a"})), "--shards", "2"]) == 2
    assert "the shards run on the workers of a Prefect server" in capsys.readouterr().err


def test_a_retried_parent_keeps_its_finished_shards_and_goes_on_from_the_failed_ones(monkeypatch):
    """The children's idempotency keys name parent, shard and attempt: a parent run again
    finds what it started before. (A fake run_deployment: the server's side is tested above.)"""
    import prefect.deployments
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed, Failed, Running

    from tasks.shards import WorkerShards

    earlier = {"p/shard-0-of-3/attempt-0": Completed(), "p/shard-1-of-3/attempt-0": Failed(),
               "p/shard-1-of-3/attempt-1": Running()}
    created = []

    def run_deployment(name, *, parameters, idempotency_key, flow_run_name, **_):
        if idempotency_key not in earlier:
            created.append((idempotency_key, flow_run_name, parameters["shard"]))
        return FlowRun(flow_id=uuid.uuid4(), name=flow_run_name, state=earlier.get(idempotency_key))

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    shards = [Shard(k, 3) for k in range(3)]
    runner = WorkerShards("backup-site-content/shard", {}, shards, 2, "p", "parent")
    states = [runner.start(s).state for s in shards]
    assert [s.type.value if s else None for s in states] == ["COMPLETED", "RUNNING", None]
    assert created == [("p/shard-2-of-3/attempt-0", "parent-shard-2-of-3", "2/3")]
    assert runner.attempt == {shards[0]: 0, shards[1]: 1, shards[2]: 0}


# --- the parent flow on two process workers ----------------------------------------------


@pytest.fixture(scope="module")
def pool(azurite, tmp_path_factory, prefect_database):
    """A Prefect server, the sharded and shard deployments of prefect.yaml, and two process
    workers (three slots each) whose runs reach Azurite through the fault proxy."""
    from tests.faultproxy import FaultProxy
    from site_backup.deploy_setup import ensure_work_pool
    from tests.deployment_stack import PREFECT, client_call, wait_for_health
    from site_backup.credentials import azurite_connection_string

    home = server_home(tmp_path_factory, prefect_database)
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # None of the server's loops: these tests read flow runs only, and a run's crash is the
    # worker's to report. With them, recording the shards' events cost more CPU than the runs.
    server_env = dict(base_env, PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST="127.0.0.1",
                      PREFECT_SERVER_API_PORT=str(port), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      **HARNESS_SERVICES_OFF)
    api_url = f"http://127.0.0.1:{port}/api"
    logs = tmp_path_factory.mktemp("logs")
    with FaultProxy(azurite.port) as proxy:
        client_env = dict(base_env, PREFECT_API_URL=api_url, PREFECT_HOME=str(tmp_path_factory.mktemp("client-home")),
                          PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path_factory.mktemp("results")),
                          AZURE_STORAGE_CONNECTION_STRING=azurite_connection_string(
                              f"http://127.0.0.1:{proxy.port}/devstoreaccount1"),
                          PWD=str(PROJECT), PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO",
                          WORK_POOL="site-backup")  # prefect.yaml's deployments name their pool through it
        server = start_process([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=server_env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
        workers = []
        try:
            wait_for_health(f"{api_url}/health", 240, logs / "server.log")
            # The pool as scripts/deploy makes it, from this process (a `prefect` command costs
            # seconds of CPU to start).
            client_call({"api_url": api_url}, lambda client: ensure_work_pool(client, "site-backup"))
            done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "backup-site-content/shard",
                                   "--name", "backup-site-sharded/local"],
                                  cwd=PROJECT, env=client_env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            for name in ("worker-a", "worker-b"):
                workers.append(start_process(
                    [PREFECT, "worker", "start", "--pool", "site-backup", "--type", "process", "--limit", "3",
                     "--name", name], cwd=PROJECT, env=client_env, stdout=open(logs / f"{name}.log", "w"),
                    stderr=subprocess.STDOUT))
            yield {"api_url": api_url, "env": client_env, "logs": logs, "azurite": azurite, "proxy": proxy}
        finally:
            for worker in workers:
                stop_process(worker)
            stop_process(server)


def start_sharded(pool, root, container, **params) -> str:
    from tests.deployment_stack import start_run

    return start_run(pool, "backup-site-sharded/local", {"root_directory": str(root), "container": container, **params})


def finished(pool, flow_run_id: str, timeout: float = 240):
    from tests.test_deployment import wait_for_state

    state = wait_for_state(pool, flow_run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout)
    logs = "".join((pool["logs"] / f"worker-{w}.log").read_text()[-3000:] for w in "ab")
    assert state.is_completed(), (state, logs)
    return state


def worker_of(pool, flow_run_name: str) -> str:
    """Which of the two workers ran the flow run: its log says it started the run's process
    (both may try to submit a run; the server lets one of them)."""
    line = f"Flow run '{flow_run_name}' submitted to infrastructure"
    ran = [w for w in ("worker-a", "worker-b") if line in (pool["logs"] / f"{w}.log").read_text()]
    assert len(ran) == 1, (flow_run_name, ran)
    return ran[0]


def tree_writes(pool, files) -> dict[str, int]:
    return {name: n for name, n in pool["proxy"].writes.items() if name in files}


def test_a_sharded_backup_on_two_workers_adds_up_and_a_killed_shard_resends_only_its_unfinished_files(
        pool, make_tree, container_name):
    """One sharded run (the Prefect stack costs a minute per run on two busy cores): four
    shards on two workers; one shard's process is SIGKILLed part-way; the parent starts that
    shard again, alone, and it resumes from its checkpoints."""
    from tests.test_deployment import flow_run_output, flow_run_processes

    files = {f"d{i % 5}/f{i:03d}.txt": f"content {i} ".encode() * (5 + i) for i in range(80)}
    root = make_tree(files)
    parts = shard_files(files, 4)
    owner = {p: k for k, paths in enumerate(parts) for p in paths}
    proxy = pool["proxy"]
    proxy.latency = 0.4  # slow enough to find and kill a shard's process part-way
    started = time.monotonic()
    try:
        parent = start_sharded(pool, root, container_name, shards=4, files_per_batch=2, files_in_flight=1)
        deadline = time.monotonic() + 180
        while True:
            landed = [sum(1 for p in tree_writes(pool, files) if owner[p] == k) for k in range(4)]
            victim = next((k for k in range(4) if 5 <= landed[k] <= len(parts[k]) - 8), None)
            if victim is not None:
                break
            assert time.monotonic() < deadline, landed
            time.sleep(0.05)
        child, child_name = find_child(pool, parent, victim)
        pids = flow_run_processes(child)
        assert pids, f"no process for shard {victim}'s run {child}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # as in a crash or a recycled machine
        before_kill = sum(1 for p in tree_writes(pool, files) if owner[p] == victim)
        finished(pool, parent)
    finally:
        proxy.latency = 0.0
    took = time.monotonic() - started
    summary = flow_run_output(pool, parent)

    # Every shard completed; the killed one on a second run, the others on their first.
    rows = summary["shards"]
    assert [r["shard"] for r in rows] == ["0/4", "1/4", "2/4", "3/4"]
    assert all(r["state"] == "Completed" and r["ran_on"] for r in rows), rows
    assert [r["attempts"] for r in rows] == [2 if k == victim else 1 for k in range(4)], rows
    assert rows[victim]["flow_run_id"] != child
    # Both workers ran shards: the four first runs were started at once and each worker has
    # three slots. The killed shard's second run may land on either, so the first run counts.
    first_runs = [r["flow_run_name"] for k, r in enumerate(rows) if k != victim] + [child_name]
    assert {worker_of(pool, name) for name in first_runs} == {"worker-a", "worker-b"}
    # The parent's summary is the sum of its shards' own summaries, each of its own files.
    children = [flow_run_output(pool, r["flow_run_id"]) for r in rows]
    for child_summary, paths, row in zip(children, parts, rows):
        assert child_summary["shard"] == row["shard"] and child_summary["files_total"] == len(paths)
    for counter in ("files_total", "files_uploaded", "files_unchanged", "files_failed", "bytes_total",
                    "bytes_uploaded", "batches", "batches_from_checkpoint"):
        assert summary[counter] == sum(c[counter] for c in children), counter
    assert summary["outcome"] == "completed" and summary["files_total"] == 80 and summary["files_failed"] == 0
    # The retried shard resumed: finished batches from checkpoints, at most the files in
    # flight at the kill sent twice, and no other shard's file sent twice.
    retried = children[victim]
    assert retried["batches_from_checkpoint"] >= 1
    resent = sorted(p for p, n in tree_writes(pool, files).items() if n > 1)
    assert all(owner[p] == victim for p in resent) and len(resent) <= 1, resent
    assert read_container(pool["azurite"], container_name) == files
    # One manifest for the whole tree, under the parent's run id, each file once: the killed
    # shard's first attempt staged blocks too, and the commit left them out.
    history = pool["azurite"].container(history_container(container_name))
    [manifest] = list(history.list_blobs(name_starts_with="runs/", include=["metadata"]))
    assert (manifest.metadata["runid"], manifest.metadata["files"]) == (parent, "80")
    lines = [json.loads(raw) for raw in gzip.decompress(history.download_blob(manifest.name).readall()).splitlines()]
    assert sorted(line["p"] for line in lines[:-1]) == sorted(files) and lines[-1]["run"]["run_id"] == parent
    # The UI shows which shard did what: the summary's markdown and a table of the shards.
    from tests.deployment_stack import run_artifacts

    artifacts = run_artifacts(pool, parent)
    assert [row["shard"] for row in json.loads(artifacts["backup-shards"].data)] == ["0/4", "1/4", "2/4", "3/4"]
    assert f"| {victim}/4 | {rows[victim]['flow_run_name']} | Completed | 2 |" in artifacts["backup-summary"].data
    print(f"\nsharded run, 80 files in 4 shards on 2 workers: {took:.1f} s from `prefect deployment run` to "
          f"Completed (load {os.getloadavg()[0]:.1f}); shard {victim} killed after {before_kill} of its "
          f"{len(parts[victim])} files; its second run: {retried['batches_from_checkpoint']} of "
          f"{retried['batches']} batches from checkpoints, {retried['files_uploaded']} uploaded, re-sent {len(resent)}")


def find_child(pool, parent: str, shard: int) -> tuple[str, str]:
    """The id and name of the running child run of `parent` for shard `shard` (of 4)."""
    from tests.deployment_stack import client_call

    async def read(client):
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

        name = (await client.read_flow_run(parent)).name  # the children's names start with it
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[f"{name}-shard-{shard}-of-4"])))
        return runs

    deadline = time.monotonic() + 30
    while True:
        runs = [r for r in client_call(pool, read) if r.state is not None and r.state.is_running()]
        if runs:
            return str(runs[0].id), runs[0].name
        assert time.monotonic() < deadline, f"no running child for shard {shard}"
        time.sleep(0.1)


# --- the same parent on Dask -------------------------------------------------------------


def test_the_sharded_backup_runs_on_a_dask_cluster_and_its_runs_restore_and_survive_prune(
        storage, checkpoints, prefect_server, tmp_path, make_tree, container_name):
    """Two sharded runs on Dask, files changed between them: each writes one manifest of the
    whole tree (committed by the parent), so --run and --as-of restore either byte for byte,
    and prune keeps the snapshots the kept runs need."""
    pytest.importorskip("prefect_dask")
    from flows.prune_backups import prune_backups
    from flows.restore_site_content import restore_site_content
    from site_backup.destination import Destination
    from site_backup.history import iso, list_runs, open_history_store
    from tests.conftest import read_tree

    files = {f"part{i % 3}/f{i:03d}.txt": f"dask {i}".encode() * 20 for i in range(60)}
    root = make_tree(files)
    env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=storage.connection_string, PREFECT_API_URL=prefect_server,
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints), PYTHONPATH=str(PROJECT))

    def sharded() -> dict:
        done = subprocess.run([sys.executable, str(PROJECT / "flows" / "backup_sharded.py"), str(root), "--container",
                               container_name, "--shards", "2", "--task-runner", "dask", "--json"],
                              env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    summary = sharded()
    assert summary["files_uploaded"] == 60 and [r["files_total"] for r in summary["shards"]] == \
        [len(p) for p in shard_files(files, 2)]
    assert len({r["ran_on"] for r in summary["shards"]}) == 2, summary["shards"]  # two worker processes
    assert read_container(storage, container_name) == files
    states = [read_tree(root)]
    for name in ("part0/f000.txt", "part1/f001.txt", "part2/f002.txt"):  # in both shards
        (root / name).write_bytes(b"changed " + name.encode())
    assert sharded()["files_uploaded"] == 3
    states.append(read_tree(root))

    runs = list_runs(open_history_store(Destination.checked(container_name)), "")
    assert [(r.files, r.outcome) for r in runs] == [(60, "completed"), (60, "completed")], runs
    kept = prune_backups(container_name, keep_last=2)
    assert (kept.manifests_deleted, kept.snapshots_deleted, kept.snapshots_kept) == (0, 0, 3)
    first = restore_site_content(container_name, str(tmp_path / "first"), run_id=runs[0].run_id[:8])
    assert first.outcome == "completed" and read_tree(tmp_path / "first") == states[0]
    last = restore_site_content(container_name, str(tmp_path / "last"), as_of=iso(runs[1].finished))
    assert last.outcome == "completed" and read_tree(tmp_path / "last") == states[1]
    pruned = prune_backups(container_name, keep_last=1)  # the first run, and the snapshots only it needed, go
    assert (pruned.manifests_deleted, pruned.snapshots_deleted) == (1, 3)
    again = restore_site_content(container_name, str(tmp_path / "again"), run_id=runs[1].run_id)
    assert again.outcome == "completed" and read_tree(tmp_path / "again") == states[1]
