"""The command line: bad input exits 2 with the fix, a real run prints the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from site_backup.cli import build_parser, main
from site_backup.credentials import AZURITE_KEY
from site_backup.summary import BackupSummary, FileProblem
from tests.conftest import PROJECT, free_port, read_container

SCRIPT = str(PROJECT / "flows" / "backup_site_content.py")


def never_called(**kwargs):
    raise AssertionError("the flow must not start on bad input")


never_called.with_options = lambda **kw: never_called
never_called.task_runner = object()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["/no/such/dir"], "does not exist"),
        (["{file}"], "is not a directory"),
        (["{dir}", "--container", "Bad_Name"], "invalid container name 'Bad_Name'"),
        (["{dir}", "--container", "ab"], "3-63 characters"),
        (["{dir}", "--container", "a--b"], "single hyphens"),
        (["{dir}", "--prefix", "a/../b"], "invalid prefix"),
        (["{dir}", "--include", ""], "empty pattern"),
    ],
)
def test_bad_input_exits_2_with_the_problem_and_the_fix(tmp_path, capsys, argv, message):
    (tmp_path / "f").write_text("x")
    argv = [a.format(file=tmp_path / "f", dir=tmp_path) for a in argv]
    assert main(never_called, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_bad_numbers_are_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(never_called, [str(tmp_path), "--files-per-batch", "0"])
    assert info.value.code == 2 and "1 or more" in capsys.readouterr().err


def test_help_lists_every_option():
    text = build_parser().format_help()
    for option in ("--container", "--prefix", "--json", "--credentials-block", "--dry-run", "--include",
                   "--exclude", "--follow-symlinks", "--refresh", "--files-per-batch", "Exit codes"):
        assert option in text


def test_summary_text_is_aligned_and_json_round_trips():
    s = BackupSummary(root="/r", destination="http://x/c/", files_total=3, files_uploaded=1, files_unchanged=1,
                      files_failed=1, outcome="incomplete", bytes_total=2048, bytes_uploaded=1024,
                      failed=[FileProblem(path="a b.txt", reason="Permission denied")])
    text = s.to_text()
    assert "Files:        3 total, 1 uploaded, 1 unchanged, 0 skipped, 1 failed" in text
    assert "a b.txt  Permission denied" in text
    assert BackupSummary.model_validate_json(s.model_dump_json()) == s and s.exit_code == 1


def run_cli(args, env_extra, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(env_extra)
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_command_line_backup_prints_json_and_exits_0(storage, prefect_server, make_tree, container_name):
    root = make_tree({"index.html": b"home", "a/b.css": b"css"})
    done = run_cli([str(root), "--container", container_name, "--json"],
                   {"AZURE_STORAGE_CONNECTION_STRING": storage.connection_string, "PREFECT_API_URL": prefect_server})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["bytes_uploaded"] == 7 and summary["outcome"] == "completed"
    assert read_container(storage, container_name) == {"index.html": b"home", "a/b.css": b"css"}


def test_command_line_unreachable_storage_exits_2_and_says_how_to_start_azurite(prefect_server, tmp_path):
    # No storage settings at all: the default is Azurite at 127.0.0.1:10000. Point the
    # check at a closed port instead so a developer's own Azurite does not interfere.
    port = free_port()
    url = f"http://127.0.0.1:{port}/devstoreaccount1"
    from site_backup.credentials import azurite_connection_string

    done = run_cli([str(tmp_path)], {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(url),
                                     "PREFECT_API_URL": prefect_server})
    assert done.returncode == 2, done.stderr
    assert f"error: cannot reach blob storage at {url}" in done.stderr
    assert "AccountKey" not in done.stderr and "Traceback" not in done.stderr


def test_default_destination_message_names_make_azurite(prefect_server, tmp_path, monkeypatch):
    from site_backup import credentials, destination

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setattr(credentials, "AZURITE_URL", f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    with pytest.raises(destination.ConfigurationError, match="make azurite"):
        destination.prepare(destination.Destination("backups"))


KEY = AZURITE_KEY


@pytest.mark.parametrize(
    "connection_string,message",
    [
        (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
         "BlobEndpoint=http://127.0.0.1:notaport/x;", "port 'notaport' of blob endpoint"),
        ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=not*base64!;"
         "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;", "account key is not valid base64"),
        ("garbage", "not valid"),
    ],
)
def test_bad_storage_settings_exit_2_with_the_fix(prefect_server, tmp_path, monkeypatch, capsys, connection_string,
                                                  message):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    assert main(never_called, [str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "AZURE_STORAGE_CONNECTION_STRING" in err
    assert "not*base64" not in err and KEY not in err


@pytest.mark.parametrize("prefix,message", [("p" * 1023, "1022 characters"), ("/".join("p" * 254), "253 folders")])
def test_a_prefix_too_long_for_any_blob_name_exits_2(tmp_path, capsys, prefix, message):
    assert main(never_called, [str(tmp_path), "--prefix", prefix]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid prefix") and message in err


def test_summary_markdown_is_a_table_and_a_dry_run_says_so():
    summary = BackupSummary(root="/r", destination="http://h/c/", files_total=2, files_uploaded=1, files_failed=1,
                            outcome="incomplete", dry_run=True,
                            failed=[FileProblem(path="a|b.txt", reason="storage answered 503 ServerBusy")])
    markdown = summary.to_markdown()
    assert markdown.startswith("# Backup incomplete (dry run)\n")
    assert "| **Files** | 2 total, 1 would upload, 0 unchanged, 0 skipped, 1 failed, 0 excluded |" in markdown
    assert "| `a\\|b.txt` | storage answered 503 ServerBusy |" in markdown and "```" not in markdown


def test_progress_description_is_in_human_units(monkeypatch):
    from tasks import report

    monkeypatch.setattr(report.ProgressArtifact, "_create", lambda self: "id")
    monkeypatch.setattr(report.ProgressArtifact, "_update", lambda self, percent: None)
    shown = report.ProgressArtifact(44, 11_016_030)
    shown.advance(44, 11_016_030)
    assert shown._text() == "44 of 44 files, 10.5 MiB of 10.5 MiB"


@pytest.mark.parametrize("module,name", [("flows.backup_site_content", "backup_site_content"),
                                         ("flows.verify_backup", "verify_backup"),
                                         ("flows.restore_site_content", "restore_site_content"),
                                         ("flows.prune_backups", "prune_backups")])
def test_every_flow_parameter_has_a_description_for_the_ui_form(module, name):
    import importlib

    from prefect.utilities.callables import parameter_schema

    flow = getattr(importlib.import_module(module), name)
    properties = parameter_schema(flow.fn).model_dump_for_openapi()["properties"]
    missing = [p for p, spec in properties.items() if not spec.get("description")]
    assert not missing, f"{name}: no description for {missing}"
    from site_backup.destination import CONTAINER_PATTERN

    assert (properties["container"]["pattern"], properties["container"]["maxLength"]) == (CONTAINER_PATTERN, 63)


def test_a_bad_container_name_is_refused_before_the_flow_runs(prefect_server):
    from prefect.exceptions import ParameterTypeError

    from flows.backup_site_content import backup_site_content

    for name in ("Bad_Name", "ab", "a--b", "-ab", "x" * 64):
        with pytest.raises(ParameterTypeError, match="container"):
            backup_site_content("/nonexistent", container=name)


def run_cli_on_a_terminal(args, env_extra, timeout=300) -> tuple[subprocess.CompletedProcess, str]:
    """Run the command line with stderr on a pseudo-terminal (160 columns), as from a shell;
    returns the finished process (stdout captured) and everything written to the terminal."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", **env_extra)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=env, text=True)
    os.close(slave)
    raw = b""
    try:
        while select.select([master], [], [], timeout)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, ""), raw.decode("utf-8", "replace")


def terminal_rows(raw: str) -> list[str]:
    """The rows a terminal shows after `raw`: enough of one to follow carriage returns, line
    feeds, erasing a line and moving the cursor up (colours and other sequences ignored)."""
    import re

    raw = re.sub(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)", "", raw)  # hyperlinks and titles
    rows, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+|\x1b", raw):
        if token == "\n":
            row, col = row + 1, 0
            rows += [""] * (row + 1 - len(rows))
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            command, arg = token[-1], token[2:-1]
            if command == "K":
                rows[row] = "" if arg == "2" else rows[row][:col]
            elif command == "A":
                row = max(0, row - int(arg or 1))
        elif token != "\x1b":
            line = rows[row].ljust(col)
            rows[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return rows


def test_progress_line_on_a_terminal_stays_below_the_log_lines_and_goes_away(storage, prefect_server, make_tree,
                                                                              container_name):
    # Prefect's log lines go to the same terminal as the progress line: each must be a row of
    # its own, and the line must be gone when the summary prints. (The hand-written line left
    # a log line written between two redraws glued to the progress text.)
    root = make_tree({f"d{i % 7}/f{i}.txt": os.urandom(2000) for i in range(400)})
    env = {"AZURE_STORAGE_CONNECTION_STRING": storage.connection_string, "PREFECT_API_URL": prefect_server,
           "PREFECT_LOGGING_LEVEL": "INFO"}
    done, raw = run_cli_on_a_terminal([str(root), "--container", container_name], env)
    assert done.returncode == 0, raw
    assert "MiB checked" in raw, raw  # the line was drawn
    rows = terminal_rows(raw)
    logs = [r for r in rows if " | INFO " in r]
    assert any("Finished in state Completed" in r for r in logs), rows
    assert not [r for r in logs if "MiB checked" in r], rows
    assert not [r for r in rows if "MiB checked" in r], rows  # transient: erased at the end
    assert "400 total, 400 uploaded" in done.stdout
    # rich hides the cursor when the line starts; it must be shown again at once, not only at
    # the end, which a run ended by os._exit (second signal, grace timeout) never reaches.
    assert raw.index("\x1b[?25h") < raw.index("Beginning flow run"), raw

    quiet, raw = run_cli_on_a_terminal([str(root), "--container", container_name, "--no-progress"], env)
    assert quiet.returncode == 0 and "MiB checked" not in raw, raw


def test_list_blobs_script_prints_size_md5_and_name(storage, container_name):
    import base64
    import hashlib

    storage.container(container_name).create_container()
    storage.container(container_name).upload_blob("a/b.txt", b"hello")
    done = subprocess.run([sys.executable, str(PROJECT / "scripts" / "list-blobs"), container_name], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": storage.connection_string})
    assert done.returncode == 0, done.stderr
    md5 = base64.b64encode(hashlib.md5(b"hello").digest()).decode()
    assert done.stdout.splitlines()[1].split() == ["5", md5, "a/b.txt"], done.stdout
