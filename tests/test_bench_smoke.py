"""The benchmark harness itself, on a tiny tree (the real benchmark is `make bench`)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT


def test_bench_smoke_measures_the_flow_the_sdk_floor_and_entra_id_behind_latency(tmp_path):
    done = subprocess.run([sys.executable, str(PROJECT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny | full | flow |" in table and "| tiny | full | sdk |" in table and "| tiny | rerun | flow |" in table
    # the latency scenario: every run through the proxy over HTTPS, Entra ID included
    for mode in ("full", "rerun", "refresh"):
        assert f"| tiny | {mode} | flow-entra |" in table, table
    assert "FAILED" not in done.stdout
    # history figures: a manifest written through ManifestWriter, and restore --list timed
    assert "| manifest size per 10^5 files |" in table and "--list` with 10 manifests" in table, table
