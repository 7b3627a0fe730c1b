"""pyproject.toml declares every package the code imports directly, not only those that
come along with another (a user installing with --no-deps, or a dependency dropping one,
would otherwise find out at run time)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys

from tests.conftest import PROJECT

LOCAL = {"site_backup", "tasks", "flows", "tests", "bench"}
# `azure` is a namespace shared by many distributions: its packages name theirs.
AZURE = {"azure.storage.blob": "azure-storage-blob", "azure.core": "azure-core", "azure.identity": "azure-identity",
         "azure.durable_functions": "azure-functions-durable", "azure.functions": "azure-functions"}


def declared() -> set[str]:
    """Distribution names in the dependencies and every extra of pyproject.toml."""
    text = re.sub(r"#[^\n]*", "", (PROJECT / "pyproject.toml").read_text())
    lists = re.findall(r"^(?:dependencies|[a-z]+) = \[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    return {re.split(r"[<>=!~\[ ;]", name, maxsplit=1)[0].lower()
            for block in lists for name in re.findall(r'"([^"]+)"', block)}


@functools.lru_cache(maxsize=1)
def _installed() -> dict:
    return importlib.metadata.packages_distributions()


def imported(path) -> set[str]:
    """Dotted names of the modules a Python file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@functools.lru_cache(maxsize=None)
def distribution(module: str) -> str:
    top = module.split(".")[0]
    if top == "azure":
        return next(dist for prefix, dist in AZURE.items() if module.startswith(prefix))
    found = _installed().get(top)
    return (found[0] if found else top.replace("_", "-")).lower()


def test_every_package_the_code_imports_is_declared():
    files = [p for folder in ("site_backup", "tasks", "flows", "tests", "bench")
             for p in (PROJECT / folder).glob("*.py")]
    files += [p for p in (PROJECT / "scripts").iterdir()
              if p.read_text(errors="replace").startswith("#!/usr/bin/env python")]
    assert len(files) > 40
    wanted = declared()
    assert {"prefect", "azure-storage-blob", "azure-identity", "fastapi", "pytest"} <= wanted  # the parse works
    missing = sorted({(distribution(m), p.relative_to(PROJECT).as_posix())
                      for p in files for m in imported(p)
                      if m.split(".")[0] not in sys.stdlib_module_names | LOCAL | {"__future__"}
                      and distribution(m) not in wanted})
    assert not missing, missing
