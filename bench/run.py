"""Benchmark the backup flow against rclone, AzCopy and a plain azure-storage-blob upload,
side by side on the same storage (a fresh in-memory Azurite for every measured run).

    python bench/run.py [--rounds 3] [--scenarios local,latency] [--latency-ms 25]
                        [--trees mixed,small,many[,million]] [--tools flow,rclone,...] [--smoke]

Scenarios: *local* is storage 0 ms away over HTTP with an account key; *latency* is storage
over HTTPS behind a proxy adding a delay to every request, for the flow with an account
key, a SAS and Entra ID (a managed-identity token), rclone and AzCopy (bench/latency.py).
Writes bench/results/bench.md (the tables) and bench/results/bench.png (the chart), and
checks the performance targets. `make bench` installs the peers and runs it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # the project's constants, and the tests' certificate and token endpoint

from site_backup.credentials import AZURITE_ACCOUNT as ACCOUNT, AZURITE_KEY as KEY  # noqa: E402
from site_backup.batch_order import DRY_RUN_BATCHES_PER_TASK  # noqa: E402
from site_backup.in_flight import START  # noqa: E402
from site_backup.units import MiB  # noqa: E402

DATA = PROJECT / "bench" / ".data"
RESULTS = PROJECT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
AZURITE = PROJECT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
AZCOPY = PROJECT / ".tools" / "node_modules" / "@azure-tools" / "azcopy-linux" / "dist" / "bin" / "azcopy_linux_amd64"


# ---- trees -------------------------------------------------------------------------------

def tree_spec(name: str):
    """(relative path, size) of every file of a named, deterministic tree, one at a time: a
    child's peak RSS counts its parent's on Linux, so the benchmark never holds a whole tree."""
    rng = random.Random(name)
    if name == "mixed":  # 2,000 files of 200 B-100 KB in 140 folders plus 4 files of 64 MiB
        yield from ((f"dir{i % 140:03d}/file{i:05d}.bin", rng.randint(200, 100_000)) for i in range(2000))
        yield from ((f"big/video{i}.bin", 64 * MiB) for i in range(4))
    elif name == "small":  # 5,000 files of 1-8 KiB
        yield from ((f"d{i % 50:02d}/f{i:05d}.txt", rng.randint(1024, 8192)) for i in range(5000))
    elif name == "many":  # 200,000 files of about 1 KiB
        yield from ((f"a{i % 200:03d}/b{i % 7}/f{i:06d}.txt", rng.randint(900, 1100)) for i in range(200_000))
    elif name == "million":  # 1,000 folders of 1,000 files of about 1 KiB (opt-in: minutes to make and run)
        yield from ((f"m{i // 1000:03d}/f{i % 1000:03d}.txt", rng.randint(900, 1100)) for i in range(1_000_000))
    elif name == "tiny":  # for the smoke run in CI
        yield from ((f"t{i % 3}/f{i}.txt", rng.randint(10, 5000)) for i in range(60))
        yield "big.bin", 9 * MiB
    else:
        raise SystemExit(f"unknown tree {name!r}: use mixed, small, many, million or tiny")


def make_tree(name: str) -> tuple[Path, int, int]:
    """Create the tree once (a stamp marks it complete); return (root, files, bytes)."""
    root = DATA / name
    stamp = DATA / f"{name}.done"
    files = total = 0
    if stamp.exists():
        for _, size in tree_spec(name):
            files, total = files + 1, total + size
    else:
        shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(f"{name}-content")
        block = rng.randbytes(MiB)
        for rel, size in tree_spec(name):
            files, total = files + 1, total + size
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                offset = rng.randrange(MiB)
                left = size
                while left:  # random-looking content without generating every byte
                    n = min(left, MiB)  # the n bytes from offset on, wrapping at the end of the block
                    piece = block[offset:offset + n] + block[:max(0, offset + n - MiB)]
                    f.write(piece)
                    left -= len(piece)
                    offset = (offset + 4099) % MiB
        stamp.write_text("ok\n")
    return root, files, total


# ---- services ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Service:
    def __init__(self, args, env=None, port=None):
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.port = port

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def wait_quiet(busy_cores: float = 0.15, timeout: float = 60) -> float:
    """Wait until the machine is nearly idle; return the seconds waited. The Prefect server
    digests a run's events after the run ends (seconds of CPU after a run with hundreds of
    task runs), and a run measured meanwhile would share the cores with it."""
    started = time.monotonic()
    hz = os.sysconf("SC_CLK_TCK")
    while time.monotonic() - started < timeout:
        before = _busy_jiffies()
        time.sleep(0.5)
        if (_busy_jiffies() - before) / hz / 0.5 < busy_cores:
            break
    return time.monotonic() - started


def start_azurite(tls: tuple[Path, Path] | None = None) -> Service:
    """A fresh in-memory Azurite; with (cert, key), over HTTPS and accepting Entra ID tokens."""
    port = free_port()
    https = ["--oauth", "basic", "--cert", str(tls[0]), "--key", str(tls[1])] if tls else []
    svc = Service([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                   "--skipApiVersionCheck", "--disableTelemetry", "--silent", *https], port=port)
    wait_port(port)
    return svc


def start_prefect_server(home: Path) -> tuple[Service, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_API_PORT=str(port), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    svc = Service([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  env=env, port=port)
    url = f"http://127.0.0.1:{port}/api"
    import urllib.request

    deadline = time.monotonic() + 240
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return svc, url
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class Storage:
    """Where the tools send their requests, and the certificate to trust (HTTPS only)."""
    url: str  # blob endpoint, account included
    azurite_url: str  # Azurite itself, for set-up requests that are not measured
    cert: Path | None = None
    proxy: object = None  # the latency proxy, which counts requests
    pids: tuple = ()  # Azurite's process and the proxy's, whose CPU a run costs

    def cpu(self) -> float:
        """CPU seconds (user + system) the storage side has used so far."""
        return sum(cpu_seconds(f"/proc/{pid}/stat") for pid in self.pids)

    def emulator_cpu(self) -> float:
        """CPU seconds Azurite's JavaScript thread has used so far. Azurite's blob service
        runs every request on that one thread, so its CPU seconds during a run are a lower
        bound on the run's wall time. Not the whole process: V8's helper threads (garbage
        collection) add CPU on the other core, which would overstate the bound."""
        azurite = self.pids[0]
        return cpu_seconds(f"/proc/{azurite}/task/{azurite}/stat")


def cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from a /proc stat file (a process's or one thread's)."""
    with open(stat) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def connection_string(url: str) -> str:
    return (f"DefaultEndpointsProtocol={url.split(':')[0]};AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={url};")


def account_sas() -> str:
    """A SAS for the whole account with the permissions the README asks for (read, add,
    create, write, delete, list on containers and blobs)."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(ACCOUNT, KEY, ResourceTypes(container=True, object=True),
                                AccountSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True),
                                expiry=datetime.now(timezone.utc) + timedelta(hours=6))


# ---- tools -------------------------------------------------------------------------------

@dataclass
class Run:
    tree: str
    mode: str  # full, rerun, dry-run
    tool: str
    round: int
    wall: float
    rss_mib: float
    ok: bool
    task_runs: int | None = None
    copy_seconds: float | None = None
    note: str = ""
    scenario: str = "local"
    cpu: float | None = None  # user + system seconds of the tool's process
    requests: int | None = None  # as counted by the latency proxy
    load: float | None = None  # the machine's 1-minute load average when the run started
    storage_cpu: float | None = None  # CPU seconds of Azurite and the proxy during the run
    emulator_cpu: float | None = None  # CPU seconds of Azurite's JavaScript thread: a bound on wall
    machine_cpu: float | None = None  # the tool's and storage's CPU seconds over the cores: a bound on wall
    latency_bound: float | None = None  # seconds of waiting on storage (latency_bound()); None: unknown
    in_flight: int | None = None  # the flow's adaptive level: the most files it had in flight


RCLONE_TRANSFERS = 16


def requests_in_flight(tool: str, summary: dict | None = None) -> int | None:
    """How many requests a tool keeps going at once as the benchmark runs it; None when that is
    not one known number. The flow's level adapts: its summary says the most it reached."""
    if tool.startswith("flow"):
        return (summary or {}).get("files_in_flight_peak") or START  # START: a run that copied nothing
    if tool == "rclone":
        return RCLONE_TRANSFERS
    # AzCopy sends requests from two pools (network operations, 32 on 2 cores, and transfer
    # initiation, 64, which checks the destination), and the SDK floor sends a large file's
    # blocks 4 at a time within its 16 threads.
    return None


def latency_bound(requests: int | None, in_flight: int | None, latency: float) -> float | None:
    """Seconds a run waits on storage `latency` seconds away if it keeps `in_flight` requests
    going all the time: requests / in flight x latency (0 with no latency; None if unknown)."""
    if latency == 0:
        return 0.0
    if requests is None or not in_flight:
        return None
    return requests / in_flight * latency


def machine_bound(cpu: float | None, storage_cpu: float | None, cores: int | None = None) -> float | None:
    """Seconds the run's CPU (the tool's and the storage side's) takes if it keeps every core
    busy all the time: where CPU, not waiting, bounds a run, no run can be shorter. A lower
    bound: the Prefect server's CPU during the run is not counted."""
    if cpu is None or storage_cpu is None:
        return None
    return (cpu + storage_cpu) / (cores or os.cpu_count() or 1)


def times_bound(wall: float, *bounds: float | None) -> float | None:
    """How far a run is from the larger of its known bounds: wall / that bound."""
    known = [b for b in bounds if b is not None]
    return wall / max(known) if known and max(known) > 0 else None


def measure(args, env, log: Path) -> tuple[float, float, float, int, str]:
    """Run a command; (wall seconds, peak RSS MiB and CPU seconds of that process, exit code, stdout)."""
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, proc.returncode, log.read_text()


# Run in a process of its own: a child's peak RSS counts its parent's at exec time on Linux,
# so the benchmark itself must not grow by importing the Azure SDK.
_FIRST_BLOB_POLLER = """
import sys, time
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient
client = ContainerClient.from_connection_string(sys.argv[1], sys.argv[2], connection_verify=sys.argv[3] or True)
print("ready", flush=True)
sys.stdin.readline()  # the tool has started
while True:
    try:
        if next(iter(client.list_blobs(results_per_page=1)), None) is not None:
            break
    except ResourceNotFoundError:
        pass  # the tool has not created the container yet
    time.sleep(0.05)
"""


def measure_first_blob(args, env, log: Path, storage: Storage, container: str,
                       timeout: float = 600) -> tuple[float, float, float, int, str]:
    """Start a full backup and time it until the first blob is in the container, then stop
    it (SIGTERM): (seconds to the first blob, peak RSS MiB, CPU seconds, 0 if a blob came, "")."""
    poller = subprocess.Popen([sys.executable, "-c", _FIRST_BLOB_POLLER, connection_string(storage.azurite_url),
                               container, str(storage.cert or "")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert poller.stdout.readline().strip() == "ready"
    first = None
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        poller.stdin.write("go\n")
        poller.stdin.flush()
        try:
            poller.wait(timeout)
            first = time.perf_counter() - started
        except subprocess.TimeoutExpired:
            poller.kill()
            poller.wait()
        if proc.poll() is None:
            proc.send_signal(15)
        _, _, usage = os.wait4(proc.pid, 0)
    return (first if first is not None else float("nan"), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
            0 if first is not None else 1, "")


def tool_command(tool, root, container, storage: Storage, mode, ctx) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "AZURE_", "RCLONE_", "IDENTITY_", "MSI_", "SSL_CERT_", "REQUESTS_CA"))}
    cs = connection_string(storage.url)
    if tool.startswith("flow"):
        env.update(PREFECT_LOGGING_LEVEL="WARNING",
                   PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(ctx["tmp"] / f"checkpoints-{container}"))
        if tool == "flow-sas":
            env["AZURE_STORAGE_CONNECTION_STRING"] = f"BlobEndpoint={storage.url};SharedAccessSignature={account_sas()}"
        elif tool == "flow-entra":  # DefaultAzureCredential finds the managed identity
            env.update(AZURE_STORAGE_ACCOUNT_URL=storage.url, **ctx["identity"].environment())
        else:
            env["AZURE_STORAGE_CONNECTION_STRING"] = cs
        if storage.cert:
            env["REQUESTS_CA_BUNDLE"] = str(storage.cert)
        if tool == "flow-ephemeral":  # make the CLI skip a local server at 4200 if one runs
            env.update(PREFECT_HOME=str(ctx["ephemeral_home"]), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                       PREFECT_API_URL="")
        else:
            env["PREFECT_API_URL"] = ctx["api_url"]
        args = [sys.executable, str(PROJECT / "flows" / "backup_site_content.py"), str(root), "--container",
                container, "--json", "--no-progress"] + (["--files-in-flight", "16"] if tool == "flow-16" else [])
        return args + {"dry-run": ["--dry-run"], "refresh": ["--refresh"]}.get(mode, []), env
    if tool == "rclone":
        env.update(RCLONE_CONFIG_AZ_TYPE="azureblob", RCLONE_CONFIG_AZ_ACCOUNT=ACCOUNT,
                   RCLONE_CONFIG_AZ_KEY=KEY, RCLONE_CONFIG_AZ_ENDPOINT=storage.url)
        args = [str(VENV_BIN / "rclone"), "copy", str(root), f"az:{container}", "--transfers", str(RCLONE_TRANSFERS)]
        args += ["--ca-cert", str(storage.cert)] if storage.cert else []
        return args + (["--dry-run"] if mode == "dry-run" else []), env
    if tool == "azcopy":
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(ACCOUNT, container, account_key=KEY,
                                     permission=ContainerSasPermissions(read=True, write=True, list=True, add=True,
                                                                        create=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=2))
        env.update(AZCOPY_LOG_LOCATION=str(ctx["tmp"] / "azcopy-logs"), AZCOPY_JOB_PLAN_LOCATION=str(
            ctx["tmp"] / "azcopy-plans"), AZCOPY_DISABLE_SYSLOG="true")
        if storage.cert:  # Go reads it for its trusted roots
            env["SSL_CERT_FILE"] = str(storage.cert)
        return [str(AZCOPY), "copy", f"{root}/*", f"{storage.url}/{container}?{sas}", "--recursive", "--from-to",
                "LocalBlob", "--put-md5", "--overwrite", "ifSourceNewer", "--log-level", "ERROR"], env
    if tool == "sdk":
        env["AZURE_STORAGE_CONNECTION_STRING"] = cs
        return [sys.executable, str(PROJECT / "bench" / "sdk_floor.py"), str(root), container], env
    raise SystemExit(f"unknown tool {tool!r}")


def available(tool: str) -> bool:
    return {"rclone": (VENV_BIN / "rclone").exists(), "azcopy": AZCOPY.exists()}.get(tool, True)


def make_container(storage: Storage, name: str) -> None:
    from azure.storage.blob import BlobServiceClient

    verify = str(storage.cert) if storage.cert else True
    BlobServiceClient.from_connection_string(connection_string(storage.azurite_url),
                                             connection_verify=verify).create_container(name)


def start_storage(scenario: str, ctx) -> tuple[Storage, list]:
    """Fresh storage for one measured unit; (storage, what to stop afterwards)."""
    if scenario == "local":
        azurite = start_azurite()
        url = f"http://127.0.0.1:{azurite.port}/{ACCOUNT}"
        return Storage(url, url, pids=(azurite.proc.pid,)), [azurite]
    from bench.latency import LatencyProxy

    cert, key = ctx["tls"]
    azurite = start_azurite((cert, key))
    proxy = LatencyProxy(azurite.port, cert, key, ctx["latency_ms"] / 1000)
    storage = Storage(f"https://127.0.0.1:{proxy.port}/{ACCOUNT}", f"https://127.0.0.1:{azurite.port}/{ACCOUNT}",
                      cert, proxy, (azurite.proc.pid, proxy.pid))
    return storage, [azurite, proxy]


def modes_for(scenario: str, tree: str, tool: str) -> list[str]:
    if tree == "many":
        return ["dry-run", "first-upload"]  # first-upload: a full backup timed to its first blob, then stopped
    if tree == "million":
        return ["dry-run"]
    if tool == "sdk":
        return ["full"]  # the floor has no incremental mode
    if scenario == "latency" and tool.startswith("flow"):
        return ["full", "rerun", "refresh"]  # refresh: a no-change run without local checkpoints
    return ["full", "rerun"]


def one(tool, tree, root, rnd, ctx, scenario="local") -> list[Run]:
    """Fresh storage; the full run, then the no-change runs (or a dry run alone)."""
    storage, services = start_storage(scenario, ctx)
    container = f"bench-{uuid.uuid4().hex[:12]}"
    runs = []
    try:
        if tool in ("azcopy", "flow-sas"):  # their SAS may not create containers
            make_container(storage, container)
        for mode in modes_for(scenario, tree, tool) if tree != "warm-up" else ["full"]:
            args, env = tool_command(tool, root, container, storage, mode, ctx)
            log = ctx["tmp"] / f"{scenario}-{tool}-{tree}-{mode}-{rnd}.log"
            if ctx["settle"] and (waited := wait_quiet(timeout=ctx["settle"])) > 2:
                print(f"  (waited {waited:.0f} s for the machine to go quiet)", flush=True)
            load = os.getloadavg()[0]
            before, storage_before = storage.proxy.count() if storage.proxy else None, storage.cpu()
            emulator_before = storage.emulator_cpu()
            if mode == "first-upload":
                wall, rss, cpu, code, out = measure_first_blob(args, env, log, storage, container)
            else:
                wall, rss, cpu, code, out = measure(args, env, log)
            time.sleep(0.2)  # the last answers leave the proxy and Azurite
            run = Run(tree, mode, tool, rnd, round(wall, 2), round(rss, 1), code == 0, scenario=scenario,
                      cpu=round(cpu, 2), load=round(load, 2), storage_cpu=round(storage.cpu() - storage_before, 2),
                      emulator_cpu=round(storage.emulator_cpu() - emulator_before, 2))
            run.machine_cpu = round(machine_bound(run.cpu, run.storage_cpu), 2)
            if storage.proxy:
                run.requests = storage.proxy.count() - before
            summary = json.loads(out) if tool.startswith("flow") and code == 0 and mode != "first-upload" else None
            latency = ctx["latency_ms"] / 1000 if storage.proxy else 0
            run.in_flight = requests_in_flight(tool, summary)
            bound = latency_bound(run.requests, run.in_flight, latency)
            run.latency_bound = None if bound is None else round(bound, 2)
            if summary is not None:
                copy_tasks = summary["batches"]
                if mode == "dry-run":  # a dry run's copy task takes several batches
                    copy_tasks = -(-copy_tasks // DRY_RUN_BATCHES_PER_TASK)
                run.task_runs = copy_tasks + 2  # and list-files, and the flow
                run.copy_seconds = summary.get("copy_seconds")
            if code != 0:
                run.note = log.with_suffix(".err").read_text()[-300:]
            runs.append(run)
            print(f"  {scenario:7} {tree:6} {mode:7} {tool:15} round {rnd}: {wall:7.2f} s  {rss:6.0f} MiB"
                  f"  cpu {cpu:6.2f} s  storage cpu {run.storage_cpu:5.2f} s{'' if run.requests is None else f'  {run.requests:6d} requests'}"
                  f"{f'  in flight {run.in_flight}' if run.in_flight else ''}"
                  f"  bounds: latency {_num(run.latency_bound) or '?'} s, emulator {run.emulator_cpu:.2f} s,"
                  f" machine {run.machine_cpu:.2f} s"
                  f" (x{_num(times_bound(wall, run.latency_bound, run.emulator_cpu, run.machine_cpu)) or ' ?'})"
                  f"  load {load:.1f}{'' if code == 0 else '  FAILED ' + run.note[-120:]}", flush=True)
    finally:
        for service in services:
            service.stop()
    return runs


# ---- report ------------------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else None


def machine(rounds: int) -> str:
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, {_mem_gib()} GiB, Python "
            f"{platform.python_version()}, {_azurite_version()}; {rounds} round(s), tools alternated (each round "
            f"starting with the next), a fresh in-memory Azurite per run; medians. {datetime.now(timezone.utc):%Y-%m-%d}.")


def _load(runs: list[Run]) -> str:
    loads = [r.load for r in runs if r.load is not None]
    return f" Load average (1 min) at the start of a run: median {median(loads):.1f}, max {max(loads):.1f}." \
        if loads else ""


def report(runs: list[Run], trees: dict, rounds: int) -> tuple[str, list[str]]:
    """The markdown table of the local scenario and its target checks (text, passed)."""
    runs = [r for r in runs if r.scenario == "local"]
    if not runs:
        return "", []
    lines = [
        "Storage 0 ms away over HTTP, account key." + _load(runs) + BOUNDS_NOTE,
        "",
        "| tree | run | tool | wall s | × rclone | × SDK | files/s | MiB/s | peak RSS MiB | task runs "
        "| orchestration s | latency bound s | emulator CPU s | machine CPU s | × bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    checks = []
    for tree, (_, files, size) in trees.items():
        for mode in ("full", "rerun", "dry-run", "first-upload"):
            here = [r for r in runs if r.tree == tree and r.mode == mode and r.ok]
            if not here:
                continue
            med = {t: median([r.wall for r in here if r.tool == t]) for t in dict.fromkeys(r.tool for r in here)}
            for tool, wall in med.items():
                mine = [r for r in here if r.tool == tool]
                rc, sdk = med.get("rclone"), med.get("sdk")
                copy = median([r.copy_seconds for r in mine if r.copy_seconds is not None])
                task_runs = median([r.task_runs for r in mine if r.task_runs is not None])
                lines.append(
                    f"| {tree} | {mode} | {tool} | {wall:.2f} | {_ratio(wall, rc)} | {_ratio(wall, sdk)} | "
                    # first-upload: the wall time is the time to the first blob, not a rate
                    f"{'' if mode == 'first-upload' else f'{files / wall:.0f}'} | "
                    f"{'' if mode == 'first-upload' else f'{size / MiB / wall:.1f}'} | "
                    f"{median([r.rss_mib for r in mine]):.0f} | "
                    f"{'' if task_runs is None else f'{task_runs:.0f}'} | "
                    f"{'' if copy is None else f'{wall - copy:.1f}'} | {_bounds(mine, wall)} |"
                )
            flow = med.get("flow")
            if flow is None:
                continue
            if mode == "full" and tree in ("mixed", "small"):
                if med.get("rclone"):
                    checks.append((f"{tree} full: flow {flow:.1f} s <= 1.0 x rclone {med['rclone']:.1f} s",
                                   flow <= med["rclone"]))
                if med.get("sdk"):
                    checks.append((f"{tree} full: flow {flow:.1f} s <= 1.15 x SDK floor {med['sdk']:.1f} s",
                                   flow <= 1.15 * med["sdk"]))
                if med.get("flow-16"):  # near storage the adaptive level must cost nothing
                    checks.append(fixed_16_check(f"{tree} full", flow, med["flow-16"]))
            if mode == "rerun" and tree in ("mixed", "small") and med.get("rclone"):
                checks.append((f"{tree} re-run: flow {flow:.1f} s <= rclone {med['rclone']:.1f} s + 3 s",
                               flow <= med["rclone"] + 3))
            if mode == "dry-run" and tree == "many":
                rss = median([r.rss_mib for r in here if r.tool == "flow"])
                checks.append((f"many dry run: flow peak RSS {rss:.0f} MiB <= 300 MiB", rss <= 300))
            if mode == "dry-run" and tree == "million":
                rss = median([r.rss_mib for r in here if r.tool == "flow"])
                checks.append((f"million dry run: flow peak RSS {rss:.0f} MiB <= 250 MiB", rss <= 250))
                many = median([r.rss_mib for r in runs if (r.tree, r.mode, r.tool) == ("many", "dry-run", "flow")
                               and r.ok])
                if many:
                    checks.append((f"million dry run: flow peak RSS {rss:.0f} MiB within 20% of the 200,000-file "
                                   f"run's {many:.0f} MiB ({rss / many - 1:+.0%})", rss <= 1.2 * many))
                if med.get("rclone"):
                    checks.append((f"million dry run: flow {flow:.1f} s <= 1.0 x rclone {med['rclone']:.1f} s",
                                   flow <= med["rclone"]))
            if mode == "full" and tree == "small":
                task_runs = median([r.task_runs for r in here if r.tool == "flow"])
                checks.append((f"small: {task_runs:.0f} task runs for {files} files <= 1 per 500",
                               task_runs <= files / 500))
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", f"{len(failed)} run(s) failed: " + "; ".join(f"{r.tool} {r.tree} {r.mode}" for r in failed)]
    return "\n".join(lines) + "\n", checks


def fixed_16_check(what: str, flow: float, fixed: float) -> tuple[str, bool]:
    """The flow with its adaptive level against `flow-16`, the fixed 16 files in flight of every run before."""
    return (f"{what}: flow {flow:.2f} s <= 1.05 x flow-16 {fixed:.2f} s (the fixed 16 files in flight of every "
            "run before)", flow <= 1.05 * fixed)


def latency_report(runs: list[Run], trees: dict, latency_ms: float) -> tuple[str, list[str]]:
    """The markdown table of the latency scenario and its target checks (text, passed)."""
    runs = [r for r in runs if r.scenario == "latency"]
    if not runs:
        return "", []
    lines = [
        f"Storage {latency_ms:g} ms away (a relay delays every request), HTTPS for every tool. `flow` signs in with "
        f"the account key, `flow-sas` with an account SAS, `flow-entra` with Entra ID (DefaultAzureCredential, a "
        f"managed identity); `refresh` is a no-change run with `--refresh` (no local checkpoints). *requests* as "
        f"counted by the relay, *CPU s* of the tool's process, *storage CPU s* of Azurite and the relay (both "
        f"on the same 2 cores)." + _load(runs) + BOUNDS_NOTE,
        "",
        "| tree | run | tool | wall s | × rclone | × key | requests | CPU s | storage CPU s | peak RSS MiB "
        "| latency bound s | emulator CPU s | machine CPU s | × bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    checks = []
    at = f"at {latency_ms:g} ms"
    for tree, (_, files, size) in trees.items():
        rclone = {m: median([r.wall for r in runs if (r.tree, r.mode, r.tool) == (tree, m, "rclone") and r.ok])
                  for m in ("full", "rerun")}
        for mode in ("full", "rerun", "refresh"):
            here = [r for r in runs if r.tree == tree and r.mode == mode and r.ok]
            if not here:
                continue
            med = {t: median([r.wall for r in here if r.tool == t]) for t in dict.fromkeys(r.tool for r in here)}
            peer = rclone["full" if mode == "full" else "rerun"]
            for tool, wall in med.items():
                mine = [r for r in here if r.tool == tool]
                requests = median([r.requests for r in mine if r.requests is not None])
                lines.append(
                    f"| {tree} | {mode} | {tool} | {wall:.2f} | {_ratio(wall, peer)} | "
                    f"{_ratio(wall, med.get('flow')) if tool.startswith('flow') else ''} | "
                    f"{'' if requests is None else f'{requests:.0f}'} | {median([r.cpu for r in mine]):.2f} | "
                    f"{_num(median([r.storage_cpu for r in mine if r.storage_cpu is not None]))} | "
                    f"{median([r.rss_mib for r in mine]):.0f} | {_bounds(mine, wall)} |"
                )
            key = med.get("flow")
            if key is None:
                continue
            if peer and tree in ("mixed", "small"):
                if mode == "full":
                    # Many small files far away: requests in flight are the bound, and the flow's adapt.
                    most = 0.35 if tree == "small" else 1.0
                    checks.append((f"{tree} full {at}: flow {key:.1f} s <= {most} x rclone {peer:.1f} s "
                                   f"({key / peer:.2f} x)", key <= most * peer))
                else:
                    what = "no-change run" if mode == "rerun" else "no-change run with --refresh"
                    checks.append((f"{tree} {what} {at}: flow {key:.1f} s <= rclone {peer:.1f} s + 2 s",
                                   key <= peer + 2))
            if med.get("flow-16") is not None and mode == "full":
                checks.append(fixed_16_check(f"{tree} full {at}", key, med["flow-16"]))
            for tool in ("flow-sas", "flow-entra"):
                if med.get(tool) is not None and tree in ("mixed", "small"):
                    checks.append((f"{tree} {mode} {at}: {tool} {med[tool]:.2f} s within 15% of the account key's "
                                   f"{key:.2f} s ({med[tool] / key - 1:+.0%})", abs(med[tool] / key - 1) <= 0.15))
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", f"{len(failed)} run(s) failed: " + "; ".join(f"{r.tool} {r.tree} {r.mode}" for r in failed)]
    return "\n".join(lines) + "\n", checks


BOUNDS_NOTE = (" *latency bound*: requests ÷ requests in flight × latency (empty where a tool's requests in flight "
               "are not one known number); *emulator CPU s*: Azurite's JavaScript thread, which runs every "
               "request; *machine CPU s*: the tool's and the storage side's CPU ÷ the cores, the run's CPU with "
               "no core ever idle; *× bound*: wall ÷ the largest of the three.")


def _bounds(runs: list[Run], wall: float) -> str:
    """The latency, emulator CPU and machine CPU bounds and wall / the largest, as table cells (medians)."""
    latency = median([r.latency_bound for r in runs if r.latency_bound is not None])
    emulator = median([r.emulator_cpu for r in runs if r.emulator_cpu is not None])
    machine = median([r.machine_cpu for r in runs if r.machine_cpu is not None])
    return f"{_num(latency)} | {_num(emulator)} | {_num(machine)} | {_num(times_bound(wall, latency, emulator, machine))}"


def _num(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _ratio(value, base):
    return f"{value / base:.2f}" if base else ""


def _mem_gib() -> int:
    with open("/proc/meminfo") as f:
        return round(int(f.readline().split()[1]) / 2**20)


def _azurite_version() -> str:
    try:
        return "Azurite " + json.loads((PROJECT / ".azurite/node_modules/azurite/package.json").read_text())["version"]
    except OSError:
        return "Azurite ?"


def chart(runs: list[Run], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; `pip install -e '.[bench]'`)")
        return
    groups = [(s, t, m) for s in dict.fromkeys(r.scenario for r in runs) for t in dict.fromkeys(r.tree for r in runs)
              for m in ("full", "rerun", "refresh", "dry-run")
              if any((r.scenario, r.tree, r.mode) == (s, t, m) and r.ok for r in runs)]
    tools = list(dict.fromkeys(r.tool for r in runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        values = [median([r.wall for r in runs if (r.scenario, r.tree, r.mode, r.tool) == (s, t, m, tool) and r.ok])
                  or 0 for s, t, m in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=tool)
    ax.set_xticks([g + width * (len(tools) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{t}\n{m}" + ("" if s == "local" else f"\n{s}") for s, t, m in groups])
    ax.set_ylabel("median wall time, s (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure_history_section(files: int, manifests: int) -> str:
    """The history figures (bench/history.py) on a fresh Azurite of their own; '' when skipped."""
    if not files:
        return ""
    from bench.history import history_report, measure_history

    azurite = start_azurite()
    try:
        figures = measure_history(connection_string(f"http://127.0.0.1:{azurite.port}/{ACCOUNT}"), files, manifests)
    finally:
        azurite.stop()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  history: manifest {figures['per_1e5_files'] / 1e6:.2f} MB per 10^5 files; --list of {manifests} "
          f"manifests {figures['list_command_seconds']:.2f} s (list_runs {figures['list_runs_seconds']:.3f} s); "
          f"load {load}", flush=True)
    return history_report(figures, load)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trees", default="mixed,small,many")
    p.add_argument("--tools", default="flow,flow-ephemeral,flow-sas,flow-entra,rclone,azcopy,sdk")
    p.add_argument("--scenarios", default="local,latency",
                   help="local: storage 0 ms away; latency: HTTPS with --latency-ms added to every request")
    p.add_argument("--latency-ms", type=float, default=25)
    p.add_argument("--smoke", action="store_true",
                   help="one round on a tiny tree: flow and SDK floor locally, flow-entra with latency (CI)")
    p.add_argument("--settle", type=float, default=60,
                   help="wait up to this many seconds before each run for the machine to go quiet")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--api-url", help="a running Prefect server's API URL for the flow's runs, instead of starting "
                                     "one (the test suite's smoke run passes its own)")
    p.add_argument("--history-files", type=int, default=100_000,
                   help="files in the manifest whose size is measured (history figures; 0: skip them)")
    p.add_argument("--history-manifests", type=int, default=100, help="manifests listed for the history figures")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.trees, args.tools, args.scenarios = 1, "tiny", "flow,sdk,flow-entra", "local,latency"
        args.history_files, args.history_manifests = 2000, 10
    scenarios = args.scenarios.split(",")
    if set(scenarios) - {"local", "latency"}:
        raise SystemExit(f"unknown scenario in {args.scenarios!r}: use local, latency or both")
    tools = [t for t in args.tools.split(",") if available(t) or print(f"({t} not installed: skipped)")]
    if "flow-ephemeral" in tools and _listening(4200):
        print("warning: a Prefect server listens on 127.0.0.1:4200, so 'flow-ephemeral' would use it instead of a "
              "temporary server: stop it (`make stop`) for that figure; skipping flow-ephemeral")
        tools.remove("flow-ephemeral")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trees = {}
    for name in args.trees.split(","):
        print(f"tree {name}: preparing...", flush=True)
        trees[name] = make_tree(name)
    tmp = Path(tempfile.mkdtemp(prefix="site-backup-bench-"))
    server, api_url = (None, args.api_url) if args.api_url else start_prefect_server(tmp / "server-home")
    ctx = {"tmp": tmp, "api_url": api_url, "ephemeral_home": tmp / "ephemeral-home", "settle": 0 if args.smoke else args.settle,
           "latency_ms": args.latency_ms}
    runs: list[Run] = []
    identity = None
    try:
        if "latency" in scenarios:
            from tests.azurite_auth import TokenEndpoint
            from tests.azurite_auth import self_signed_certificate

            ctx["tls"] = self_signed_certificate(tmp / "tls")
            ctx["identity"] = identity = TokenEndpoint()
        warm = make_tree("tiny")[0] if "tiny" not in trees else trees["tiny"][0]
        for tool in {"flow", "flow-ephemeral"} & set(tools) - ({"flow"} if args.api_url else set()):
            # Not measured: a new server's first flow and task runs are slower (its database is
            # new, its routes cold); a deployed server, or one of --api-url, is past them.
            one(tool, "warm-up", warm, 0, ctx)
        for rnd in range(1, args.rounds + 1):
            for scenario in scenarios:
                for tree, (root, _, _) in trees.items():
                    # Each round starts with another tool: the first run after a tree change
                    # (or after AzCopy's CPU-heavy runs) should not always be the same tool's.
                    shift = (rnd - 1) % len(tools)
                    for tool in tools[shift:] + tools[:shift]:
                        if scenario == "local" and tool in ("flow-sas", "flow-entra"):
                            continue  # sign-in modes are compared where they matter, over HTTPS
                        if scenario == "latency" and (tree in ("many", "million") or tool in ("sdk", "flow-ephemeral")):
                            continue
                        if tree in ("many", "million") and tool not in ("flow", "rclone"):
                            continue
                        if args.smoke and scenario == "latency" and tool == "flow":
                            continue  # the smoke run checks the harness: flow-entra covers that path
                        if tool == "flow-ephemeral" and rnd > 1 and not args.smoke:
                            continue  # reported for scale, one round is enough
                        runs += one(tool, tree, root, rnd, ctx, scenario)
        history_table = measure_history_section(args.history_files, args.history_manifests)
    finally:
        if server:
            server.stop()
        if identity:
            identity.close()
    table, checks = report(runs, trees, args.rounds)
    latency_table, latency_checks = latency_report(runs, trees, args.latency_ms)
    checks += latency_checks
    text = "\n\n".join(part for part in (machine(args.rounds), table, latency_table, history_table) if part)
    (out / "bench.md").write_text(text + "\n" + "\n".join(f"- {'PASS' if ok else 'FAIL'}: {line}"
                                                           for line, ok in checks) + "\n")
    (out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    chart(runs, out / "bench.png")
    print("\n" + text)
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {line}")
    print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.png'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
