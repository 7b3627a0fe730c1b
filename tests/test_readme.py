"""The README is the user's page: it stays short, its links lead somewhere, every command it
names parses, and the blocks marked as tested run as written in a fresh clone."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import PROJECT, free_port

README = PROJECT / "README.md"
DOCS = sorted((PROJECT / "docs").glob("*.md"))
# A fenced block right after this comment is run by test_tested_blocks_run_in_a_fresh_clone.
TESTED_MARK = "<!-- tested: tests/test_readme.py runs this block in a fresh clone -->"
SHARED_INSTALLS = (".venv", ".azurite", ".tools")


def code_in(text: str) -> list[str]:
    """The text of every fenced block and inline code span."""
    blocks = re.findall(r"(?ms)^```[^\n]*\n(.*?)^```", text)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"(?ms)^```.*?^```", "", text))
    return blocks + inline


def marked_blocks(text: str) -> list[list[str]]:
    """The commands of each block marked as tested (comments after `#` dropped)."""
    blocks = re.findall(r"(?ms)^" + re.escape(TESTED_MARK) + r"\n```[^\n]*\n(.*?)^```", text)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_readme_is_a_short_page():
    assert len(README.read_bytes()) < 10_000


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_link_leads_to_a_file_and_heading(page):
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            headings = re.findall(r"(?m)^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```", "", linked.read_text()))
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_every_command_named_in_the_readme_parses():
    code = "\n".join(code_in(README.read_text()))
    flows = sorted(set(re.findall(r"python (flows/\w+\.py)", code)))
    targets = sorted(set(re.findall(r"\bmake ([a-z][a-z-]*)", code)))
    subcommands = sorted(set(m.strip() for m in re.findall(r"\bprefect((?: [a-z][a-z-]*)+)", code)))
    assert flows and targets and subcommands
    for target in targets:
        done = run(["make", "-n", target], cwd=PROJECT)
        assert done.returncode == 0, (target, done.stderr)
    # Every script's and `prefect ...`'s --help in one process, each called as its command line
    # calls it: importing Prefect costs seconds of CPU per process.
    helps = ("import runpy, sys\nfrom prefect.cli import app\n"
             "for command in sys.argv[1:]:\n"
             "    script = command.endswith('.py')\n"
             "    sys.argv = [command, '--help'] if script else ['prefect', *command.split(), '--help']\n"
             "    try:\n        runpy.run_path(command, run_name='__main__') if script else app()\n"
             "    except SystemExit as stop:\n"
             "        if stop.code:\n            sys.exit(f'{command} --help: exit {stop.code}')\n"
             "    print(f'== {command}: usage shown', flush=True)\n")
    done = run([str(PROJECT / ".venv/bin/python"), "-c", helps, *flows, *subcommands], cwd=PROJECT)
    assert done.returncode == 0, (done.stdout[-1000:], done.stderr[-1000:])
    for command in [*flows, *subcommands]:
        assert f"== {command}: usage shown" in done.stdout, (command, done.stdout[-3000:])
    for script in flows:
        shown = done.stdout.split(f"== {script}: usage shown")[0].rsplit(": usage shown", 1)[-1]
        assert "usage:" in shown, (script, shown[-2000:])


@pytest.fixture
def fresh_clone(tmp_path):
    """A `git clone` of this checkout (its committed tree) with the shared installs linked in."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT), str(clone)], check=True, timeout=120)
    for name in SHARED_INSTALLS:
        installed = PROJECT / name
        assert installed.exists(), f"{installed} is missing: run `make setup`"
        (clone / name).symlink_to(installed.resolve())
    # A clone's files are newer than the linked .venv/.installed; make would then reinstall the
    # shared environment from the clone. The set-up itself is what `make setup` (CI) tests.
    installed_at = (PROJECT / ".venv" / ".installed").stat().st_mtime
    os.utime(clone / "pyproject.toml", (installed_at - 1, installed_at - 1))
    yield clone
    shutil.rmtree(clone, ignore_errors=True)


def processes_in(folder, wait: float) -> dict[int, str]:
    """The processes whose working directory is in `folder` (pid: command line), once none
    has gone for `wait` seconds."""
    def scan():
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(folder)):
                    found[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:120]
            except OSError:
                pass
        return found

    deadline = time.monotonic() + wait
    while (found := scan()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_tested_blocks_run_in_a_fresh_clone(fresh_clone):
    blocks = marked_blocks(README.read_text())
    assert len(blocks) == 2 and blocks[0][0].startswith("make run"), blocks
    prefect_port, azurite_port = free_port(), free_port()
    # As a user's shell: no Prefect settings (the clone's prefect.toml and profile apply).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AZURE_STORAGE", "WORK_POOL"))}
    env.update(PREFECT_PORT=str(prefect_port), AZURITE_PORT=str(azurite_port), PREFECT_WORKER_QUERY_SECONDS="1")
    # The README names the default ports; the test runs on free ones.
    commands = [c.replace(":4200", f":{prefect_port}").replace(":10000", f":{azurite_port}")
                for block in blocks for c in block]
    # Run as a user would, in order, stopping at the first failure; `make stop` comes last anyway.
    script = "set -e\n" + "\n".join(c for c in commands if c != "make stop")
    started = time.monotonic()
    try:
        shell = subprocess.Popen(["bash", "-c", script], cwd=fresh_clone, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        stdout, stderr = shell.communicate(timeout=420)
        done = subprocess.CompletedProcess(shell.args, shell.returncode, stdout, stderr)
        took = time.monotonic() - started
        # A Ctrl-C in the terminal reaches the whole process group of what the user ran: the
        # services must not be in it (Prefect's --background server stayed there and died).
        try:
            os.killpg(shell.pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until every process of the group has ended
                os.killpg(shell.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
        still_serving = [run(["scripts/port-open", str(port)], cwd=fresh_clone).returncode == 0
                         for port in (prefect_port, azurite_port)]
    finally:
        stopped = run(["make", "stop"], cwd=fresh_clone, env=env)
        left = processes_in(fresh_clone, wait=15)
        for pid in left:  # never leave them running, even when the test fails
            os.kill(pid, signal.SIGKILL)
    assert not left, f"make stop left processes running: {left} ({stopped.stdout})"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert still_serving == [True, True], "a Ctrl-C to the commands' process group stopped a service"
    assert "Outcome:      completed" in done.stdout
    assert "index.html" in done.stdout  # list-blobs shows the sample site's blobs
    assert "Flow run finished successfully in 'Completed'" in done.stdout + done.stderr
    assert stopped.returncode == 0 and "stopped the Prefect server" in stopped.stdout, stopped
    for port in (prefect_port, azurite_port):
        assert run(["scripts/port-open", str(port)], cwd=fresh_clone).returncode != 0, f"port {port} still open"
    assert not (fresh_clone / ".prefect" / "server.pid").exists()
    print(f"\nREADME blocks in a fresh clone: {took:.1f} s ({len(commands)} commands, load {os.getloadavg()[0]:.1f})")
