"""The benchmark harness itself, on a tiny tree (the real benchmark is `make bench`)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT


def test_bench_smoke_measures_the_flow_the_sdk_floor_and_entra_id_behind_latency(tmp_path, prefect_server):
    # The session's Prefect server, not one of the benchmark's own (a server's start costs the
    # suite 10-20 s of CPU; `make bench` itself still starts one).
    done = subprocess.run([sys.executable, str(PROJECT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path),
                           "--api-url", prefect_server],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny | full | flow |" in table and "| tiny | full | sdk |" in table and "| tiny | rerun | flow |" in table
    # the latency scenario: every run through the proxy over HTTPS, Entra ID included
    for mode in ("full", "rerun", "refresh"):
        assert f"| tiny | {mode} | flow-entra |" in table, table
    assert "FAILED" not in done.stdout
    # each row's two bounds and how far the run is from the larger: 0 latency bound at 0 ms
    assert table.count("| latency bound s | emulator CPU s | machine CPU s | × bound |") == 2, table
    for row, latency_is in (("| tiny | full | flow |", lambda s: s == 0), ("| tiny | full | flow-entra |", lambda s: s > 0)):
        line = next(line for line in table.splitlines() if line.startswith(row))
        latency, emulator, machine, times = (float(cell) for cell in line.split("|")[-5:-1])
        assert latency_is(latency) and emulator > 0 and machine > emulator / 2 and times >= 1, line
    # history figures: a manifest written through ManifestWriter, and restore --list timed
    assert "| manifest size per 10^5 files |" in table and "--list` with 10 manifests" in table, table
