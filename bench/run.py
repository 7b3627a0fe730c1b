"""Benchmark the backup flow against rclone, AzCopy and a plain azure-storage-blob upload,
side by side on the same storage (a fresh in-memory Azurite for every measured run).

    python bench/run.py [--rounds 3] [--trees mixed,small,many] [--tools flow,rclone,...] [--smoke]

Writes bench/results/bench.md (the table) and bench/results/bench.png (the chart), and
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
DATA = PROJECT / "bench" / ".data"
RESULTS = PROJECT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
AZURITE = PROJECT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
AZCOPY = PROJECT / ".tools" / "node_modules" / "@azure-tools" / "azcopy-linux" / "dist" / "bin" / "azcopy_linux_amd64"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MiB = 2**20


# ---- trees -------------------------------------------------------------------------------

def tree_spec(name: str):
    """(relative path, size) of every file of a named, deterministic tree."""
    rng = random.Random(name)
    if name == "mixed":  # 2,000 files of 200 B-100 KB in 140 folders plus 4 files of 64 MiB
        files = [(f"dir{i % 140:03d}/file{i:05d}.bin", rng.randint(200, 100_000)) for i in range(2000)]
        return files + [(f"big/video{i}.bin", 64 * MiB) for i in range(4)]
    if name == "small":  # 5,000 files of 1-8 KiB
        return [(f"d{i % 50:02d}/f{i:05d}.txt", rng.randint(1024, 8192)) for i in range(5000)]
    if name == "many":  # 200,000 files of about 1 KiB
        return [(f"a{i % 200:03d}/b{i % 7}/f{i:06d}.txt", rng.randint(900, 1100)) for i in range(200_000)]
    if name == "tiny":  # for the smoke run in CI
        return [(f"t{i % 3}/f{i}.txt", rng.randint(10, 5000)) for i in range(60)] + [("big.bin", 9 * MiB)]
    raise SystemExit(f"unknown tree {name!r}: use mixed, small, many or tiny")


def make_tree(name: str) -> tuple[Path, int, int]:
    """Create the tree once (a stamp marks it complete); return (root, files, bytes)."""
    spec = tree_spec(name)
    root = DATA / name
    stamp = DATA / f"{name}.done"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(f"{name}-content")
        block = rng.randbytes(MiB)
        for rel, size in spec:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                offset = rng.randrange(MiB)
                left = size
                while left:  # random-looking content without generating every byte
                    piece = (block[offset:] + block[:offset])[: min(left, MiB)]
                    f.write(piece)
                    left -= len(piece)
                    offset = (offset + 4099) % MiB
        stamp.write_text("ok\n")
    return root, len(spec), sum(size for _, size in spec)


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
    digests a run's events after the run ends (after the 318 task runs of the *many* dry
    run: 6 s at one full core), and a run measured meanwhile shares the 2 cores with it."""
    started = time.monotonic()
    hz = os.sysconf("SC_CLK_TCK")
    while time.monotonic() - started < timeout:
        before = _busy_jiffies()
        time.sleep(0.5)
        if (_busy_jiffies() - before) / hz / 0.5 < busy_cores:
            break
    return time.monotonic() - started


def start_azurite() -> Service:
    port = free_port()
    svc = Service([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                   "--skipApiVersionCheck", "--disableTelemetry", "--silent"], port=port)
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


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


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


def measure(args, env, log: Path) -> tuple[float, float, int, str]:
    """Run a command; (wall seconds, peak RSS MiB of that process, exit code, stdout)."""
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, log.read_text()


def tool_command(tool, root, container, port, mode, ctx) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AZURE_", "RCLONE_"))}
    cs = connection_string(port)
    if tool in ("flow", "flow-ephemeral"):
        env.update(AZURE_STORAGE_CONNECTION_STRING=cs, PREFECT_LOGGING_LEVEL="WARNING",
                   PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(ctx["tmp"] / f"checkpoints-{container}"))
        if tool == "flow":
            env["PREFECT_API_URL"] = ctx["api_url"]
        else:
            env.update(PREFECT_HOME=str(ctx["ephemeral_home"]), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        args = [sys.executable, str(PROJECT / "flows" / "backup_site_content.py"), str(root), "--container",
                container, "--json", "--no-progress"]
        if tool == "flow-ephemeral":  # make the CLI skip a local server at 4200 if one runs
            env["PREFECT_API_URL"] = ""
        return args + (["--dry-run"] if mode == "dry-run" else []), env
    if tool == "rclone":
        env.update(RCLONE_CONFIG_AZ_TYPE="azureblob", RCLONE_CONFIG_AZ_ACCOUNT="devstoreaccount1",
                   RCLONE_CONFIG_AZ_KEY=KEY, RCLONE_CONFIG_AZ_ENDPOINT=f"http://127.0.0.1:{port}/devstoreaccount1")
        args = [str(VENV_BIN / "rclone"), "copy", str(root), f"az:{container}", "--transfers", "16"]
        return args + (["--dry-run"] if mode == "dry-run" else []), env
    if tool == "azcopy":
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas("devstoreaccount1", container, account_key=KEY,
                                     permission=ContainerSasPermissions(read=True, write=True, list=True, add=True,
                                                                        create=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=2))
        env.update(AZCOPY_LOG_LOCATION=str(ctx["tmp"] / "azcopy-logs"), AZCOPY_JOB_PLAN_LOCATION=str(
            ctx["tmp"] / "azcopy-plans"), AZCOPY_DISABLE_SYSLOG="true")
        url = f"http://127.0.0.1:{port}/devstoreaccount1/{container}?{sas}"
        return [str(AZCOPY), "copy", f"{root}/*", url, "--recursive", "--from-to", "LocalBlob", "--put-md5",
                "--overwrite", "ifSourceNewer", "--log-level", "ERROR"], env
    if tool == "sdk":
        env["AZURE_STORAGE_CONNECTION_STRING"] = cs
        return [sys.executable, str(PROJECT / "bench" / "sdk_floor.py"), str(root), container], env
    raise SystemExit(f"unknown tool {tool!r}")


def available(tool: str) -> bool:
    return {"rclone": (VENV_BIN / "rclone").exists(), "azcopy": AZCOPY.exists()}.get(tool, True)


def make_container(port: int, name: str) -> None:
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(connection_string(port)).create_container(name)


def one(tool, tree, root, rnd, modes, ctx) -> list[Run]:
    """Fresh Azurite; the full run, then the no-change re-run (or a dry run alone)."""
    azurite = start_azurite()
    container = f"bench-{uuid.uuid4().hex[:12]}"
    if tool == "azcopy":
        make_container(azurite.port, container)
    runs = []
    try:
        for mode in modes:
            if mode == "rerun" and tool == "sdk":
                continue  # the floor has no incremental mode
            args, env = tool_command(tool, root, container, azurite.port, mode, ctx)
            log = ctx["tmp"] / f"{tool}-{tree}-{mode}-{rnd}.log"
            if ctx["settle"] and (waited := wait_quiet()) > 2:
                print(f"  (waited {waited:.0f} s for the machine to go quiet)", flush=True)
            wall, rss, code, out = measure(args, env, log)
            run = Run(tree, mode, tool, rnd, round(wall, 2), round(rss, 1), code == 0)
            if tool.startswith("flow") and code == 0:
                summary = json.loads(out)
                run.task_runs = summary["batches"] + 2
                run.copy_seconds = summary.get("copy_seconds")
            if code != 0:
                run.note = log.with_suffix(".err").read_text()[-300:]
            runs.append(run)
            print(f"  {tree:6} {mode:7} {tool:15} round {rnd}: {wall:7.2f} s  {rss:6.0f} MiB"
                  f"{'' if code == 0 else '  FAILED ' + run.note[-120:]}", flush=True)
    finally:
        azurite.stop()
    return runs


# ---- report ------------------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else None


def report(runs: list[Run], trees: dict, rounds: int) -> tuple[str, list[str]]:
    """The markdown table and the list of target checks (text, passed)."""
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {_mem_gib()} GiB, Python {platform.python_version()}, "
        f"{_azurite_version()}; {rounds} round(s), tools alternated, a fresh in-memory Azurite per run; "
        f"medians. {datetime.now(timezone.utc):%Y-%m-%d}.",
        "",
        "| tree | run | tool | wall s | × rclone | × SDK | files/s | MiB/s | peak RSS MiB | task runs | orchestration s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    checks = []
    for tree, (_, files, size) in trees.items():
        for mode in ("full", "rerun", "dry-run"):
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
                    f"{files / wall:.0f} | {size / MiB / wall:.1f} | {median([r.rss_mib for r in mine]):.0f} | "
                    f"{'' if task_runs is None else f'{task_runs:.0f}'} | "
                    f"{'' if copy is None else f'{wall - copy:.1f}'} |"
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
            if mode == "rerun" and tree in ("mixed", "small") and med.get("rclone"):
                checks.append((f"{tree} re-run: flow {flow:.1f} s <= rclone {med['rclone']:.1f} s + 3 s",
                               flow <= med["rclone"] + 3))
            if mode == "dry-run" and tree == "many":
                rss = median([r.rss_mib for r in here if r.tool == "flow"])
                checks.append((f"many dry run: flow peak RSS {rss:.0f} MiB <= 300 MiB", rss <= 300))
            if mode == "full" and tree == "small":
                task_runs = median([r.task_runs for r in here if r.tool == "flow"])
                checks.append((f"small: {task_runs:.0f} task runs for {files} files <= 1 per 500",
                               task_runs <= files / 500))
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", f"{len(failed)} run(s) failed: " + "; ".join(f"{r.tool} {r.tree} {r.mode}" for r in failed)]
    return "\n".join(lines) + "\n", checks


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
    groups = [(t, m) for t in dict.fromkeys(r.tree for r in runs) for m in ("full", "rerun", "dry-run")
              if any(r.tree == t and r.mode == m and r.ok for r in runs)]
    tools = list(dict.fromkeys(r.tool for r in runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        values = [median([r.wall for r in runs if (r.tree, r.mode, r.tool) == (t, m, tool) and r.ok]) or 0
                  for t, m in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=tool)
    ax.set_xticks([g + width * (len(tools) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{t}\n{m}" for t, m in groups])
    ax.set_ylabel("median wall time, s (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trees", default="mixed,small,many")
    p.add_argument("--tools", default="flow,flow-ephemeral,rclone,azcopy,sdk")
    p.add_argument("--smoke", action="store_true", help="one round on a tiny tree, flow and SDK floor only (CI)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.trees, args.tools = 1, "tiny", "flow,sdk"
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
    server, api_url = start_prefect_server(tmp / "server-home")
    ctx = {"tmp": tmp, "api_url": api_url, "ephemeral_home": tmp / "ephemeral-home", "settle": not args.smoke}
    runs: list[Run] = []
    try:
        warm = make_tree("tiny")[0] if "tiny" not in trees else trees["tiny"][0]
        for tool in {"flow", "flow-ephemeral"} & set(tools):
            # Not measured: a server's first flow and task runs are slower (its database is
            # new, its routes cold); a deployed server has long been past them.
            one(tool, "warm-up", warm, 0, ["full"], ctx)
        for rnd in range(1, args.rounds + 1):
            for tree, (root, _, _) in trees.items():
                modes = ["dry-run"] if tree == "many" else ["full", "rerun"]
                for tool in tools:
                    if tree == "many" and tool not in ("flow", "rclone"):
                        continue
                    if tool == "flow-ephemeral" and rnd > 1 and not args.smoke:
                        continue  # reported for scale, one round is enough
                    runs += one(tool, tree, root, rnd, modes, ctx)
    finally:
        server.stop()
    table, checks = report(runs, trees, args.rounds)
    (out / "bench.md").write_text(table + "\n" + "\n".join(f"- {'PASS' if ok else 'FAIL'}: {text}"
                                                            for text, ok in checks) + "\n")
    (out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    chart(runs, out / "bench.png")
    print("\n" + table)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.png'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
