"""The layers of docs/design.md hold: import-linter's contracts in pyproject.toml are kept,
and every module of site_backup/ is placed in a layer."""

import pathlib
import shutil
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "lint-imports is missing: install the test extra (make setup)"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_every_module_has_a_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    modules = {f"site_backup.{p.stem}" for p in (ROOT / "site_backup").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set(), "add these modules to a layer in pyproject.toml"
    assert {"flows", "tasks"} <= named
