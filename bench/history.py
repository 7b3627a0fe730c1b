"""History figures for the benchmark: the size of a run manifest per 10^5 files, written
through the real ManifestWriter into Azurite, and the time to list a destination's history
(`restore --list`, the whole command, and list_runs alone) with many manifests."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def synthetic_entries(n: int, seed: int = 16):
    """Lines like the 'many' tree's: paths a123/b4/f012345.txt, about 1 KiB, real-looking
    MD5s and nanosecond mtimes (random, so they compress as real ones do)."""
    rng = random.Random(seed)
    base = 1_764_000_000 * 10**9
    for i in range(n):
        md5 = hashlib.md5(rng.randbytes(8)).digest()
        yield (f"a{i % 200:03d}/b{i % 7}/f{i:06d}.txt", rng.randint(900, 1100), md5,
               base + rng.randrange(10**16), None)


def write_manifest(history_store, prefix: str, run_id: str, started: dt.datetime, entries, batch: int = 1000):
    """One manifest of `entries`, fed a batch at a time as a backup feeds it; returns its record."""
    from site_backup.copy import BatchResult
    from site_backup.history import ManifestWriter

    writer = ManifestWriter(history_store, prefix, run_id, started)
    chunk = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == batch:
            writer.add_batch(BatchResult(entries=chunk), [])
            chunk = []
    if chunk:
        writer.add_batch(BatchResult(entries=chunk), [])
    record = writer.finish({"outcome": "completed"}, "/bench", "bench", started + dt.timedelta(minutes=1))
    if writer.broken:
        raise RuntimeError(writer.broken)
    return record


def measure_history(connection_string: str, files: int = 100_000, manifests: int = 100) -> dict:
    """{manifest_bytes, per_1e5_files, write_seconds, list_runs_seconds, list_command_seconds}
    on the storage of `connection_string` (a fresh container pair)."""
    sys.path.insert(0, str(PROJECT))
    from site_backup.accounts import _account
    from site_backup.destination import Destination
    from site_backup.history import list_runs, open_history_store

    earlier = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = connection_string
    try:
        _account.cache_clear()
        return _measure(connection_string, files, manifests)
    finally:
        if earlier is None:
            os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
        else:
            os.environ["AZURE_STORAGE_CONNECTION_STRING"] = earlier
        _account.cache_clear()


def _measure(connection_string: str, files: int, manifests: int) -> dict:
    from site_backup.destination import Destination
    from site_backup.history import list_runs, open_history_store

    container = f"bench-history-{os.getpid()}"
    history = open_history_store(Destination.checked(container))
    history.create_container()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    began = time.monotonic()
    big = write_manifest(history, "", "big-run", start, synthetic_entries(files))
    write_seconds = time.monotonic() - began
    for i in range(manifests - 1):  # the rest small: listing costs by count, not size
        write_manifest(history, "", f"run-{i:04d}", start + dt.timedelta(days=i + 1), synthetic_entries(10, i))
    began = time.monotonic()
    runs = list_runs(history, "")
    list_seconds = time.monotonic() - began
    assert len(runs) == manifests, len(runs)
    env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=connection_string)
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(PROJECT / "flows" / "restore_site_content.py"), container, "--list"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    command_seconds = time.monotonic() - began
    if done.returncode != 0 or len(done.stdout.splitlines()) != manifests + 1:
        raise RuntimeError(f"restore --list failed: {done.stderr[-1000:]}")
    return {"files": files, "manifests": manifests, "manifest_bytes": big.manifest_size,
            "per_1e5_files": big.manifest_size * 100_000 / files, "write_seconds": write_seconds,
            "list_runs_seconds": list_seconds, "list_command_seconds": command_seconds}


def history_report(figures: dict, load: str) -> str:
    """The markdown section of bench.md."""
    return "\n".join([
        "## History",
        "",
        f"Load average at the time: {load}.",
        "",
        "| what | figure |",
        "| --- | --- |",
        f"| manifest of {figures['files']:,} files (gzip, through ManifestWriter into Azurite) | "
        f"{figures['manifest_bytes'] / 1e6:.2f} MB, {figures['manifest_bytes'] / figures['files']:.1f} bytes a file |",
        f"| manifest size per 10^5 files | {figures['per_1e5_files'] / 1e6:.2f} MB |",
        f"| writing it | {figures['write_seconds']:.2f} s |",
        f"| list_runs with {figures['manifests']} manifests | {figures['list_runs_seconds']:.3f} s |",
        f"| `restore_site_content.py C --list` with {figures['manifests']} manifests (whole command) | "
        f"{figures['list_command_seconds']:.2f} s |",
    ])
