"""The command line of the backup flow: parse, check, pick a Prefect server, run, report."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
import urllib.request

from .destination import Destination, prepare, storage_account
from .errors import ConfigurationError, redact
from .files import check_root, compile_patterns
from .mirror import DEFAULT_MAX_DELETE, DeleteLimit
from .retry import (STOP, RetryPolicy, RunStopped, StorageBudget, StorageUnavailable, forget_on_stop, on_stop,
                    request_stop, stop_signal)
from .shards import SHARD_BY, Shard, check_mirror
from .summary import EXIT_BAD_INPUT, EXIT_INCOMPLETE, RunFailed

LOCAL_PREFECT_API = "http://127.0.0.1:4200/api"  # where `make server` puts it


def build_parser(sharded: bool = False) -> argparse.ArgumentParser:
    """The backup's command line; with `sharded`, that of flows/backup_sharded.py."""
    p = argparse.ArgumentParser(
        prog="python flows/backup_sharded.py" if sharded else "python flows/backup_site_content.py",
        description="Back up a directory tree as N shards at once: one child run of the backup deployment per "
                    "shard on the workers of its pool (or one task per shard on Dask), and one summary."
        if sharded else "Back up a directory tree to Azure Blob Storage (or the local Azurite emulator).",
        epilog=(
            "Destination: --credentials-block, else AZURE_STORAGE_CONNECTION_STRING, else "
            "AZURE_STORAGE_ACCOUNT_URL (DefaultAzureCredential), else Azurite at 127.0.0.1:10000. "
            "Exit codes: 0 all files backed up, 1 some files failed (the rest were backed up) or the run "
            "could not go on (storage stopped answering), 2 bad input or configuration (nothing uploaded), "
            "130 and 143 stopped by Ctrl-C and SIGTERM (finished batches are checkpointed)."
        ),
    )
    p.add_argument("root", metavar="ROOT", help="folder to back up")
    p.add_argument("--container", default="backups", help="blob container (created if missing; default: backups)")
    p.add_argument("--prefix", default="", help="blob name prefix, e.g. site/2026 (default: none)")
    p.add_argument("--credentials-block", metavar="NAME", help="saved prefect-azure AzureBlobStorageCredentials block")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="back up only files matching GLOB (repeatable; `*` stays in a folder, `**` crosses folders)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out files and folders matching GLOB (repeatable; wins over --include)")
    p.add_argument("--follow-symlinks", action="store_true", help="follow links that stay inside ROOT (never loops)")
    p.add_argument("--dry-run", action="store_true", help="compare and report, upload nothing")
    if not sharded:
        p.add_argument("--verify", action="store_true",
                       help="upload nothing; check every file has a blob of the same size and MD5, and list "
                            "missing, different and extra blobs (exit 1 when a file is missing or different)")
    p.add_argument("--refresh", action="store_true", help="ignore checkpoints of earlier runs and re-check every file")
    if not sharded:  # a shard sees part of the tree: it may not mirror it
        p.add_argument("--delete-missing", action="store_true",
                       help="mirror: after a run without failures, delete the blobs of files no longer in ROOT "
                            "(files left out by --include/--exclude are kept); history keeps their content")
        p.add_argument("--max-delete", metavar="N|P%",
                       help="with --delete-missing: delete at most N files, or P%% of the destination's files "
                            f"(default {DEFAULT_MAX_DELETE.replace('%', '%%')}); past it, or when ROOT holds no file at all (an "
                            "unmounted share), nothing is deleted and the run exits 2. 100%% lifts both checks")
    p.add_argument("--checkpoint-block", metavar="NAME",
                   help="keep checkpoints in this saved AzureBlobStorageContainer block (container and folder) "
                        "instead of the local Prefect home, so a run on another machine resumes too")
    p.add_argument("--checkpoint-days", type=float, metavar="DAYS",
                   help="checkpoints older than this are not trusted (default: they never expire)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on the terminal")
    sharding = p.add_argument_group("sharding")
    if not sharded:
        sharding.add_argument("--shard", metavar="K/N",
                              help="back up only shard K of N (0 <= K < N): the files whose path hashes to K modulo "
                                   "N, rclone's --hash-filter rule (flows/backup_sharded.py runs every shard)")
    sharding.add_argument("--shard-by", choices=SHARD_BY, default="path",
                          help="what the shard rule hashes: each file's path (default), or its top-level folder "
                               "(a whole top-level folder goes to one shard)")
    tuning = p.add_argument_group("tuning")
    tuning.add_argument("--files-per-batch", type=_positive, default=1000, help="files per copy task (default 1000)")
    tuning.add_argument("--mib-per-batch", type=_positive, default=256, help="MiB per copy task (default 256)")
    if not sharded:  # a shard's run has its own, fixed at the deployment's
        tuning.add_argument("--parallel-batches", type=_positive, default=4, help="copy tasks at once (default 4)")
    if sharded:
        tuning.add_argument("--task-runner", choices=("workers", "dask"), default="workers",
                            help="where the shards run: child runs of --deployment on its pool's workers (default), "
                                 "or tasks on a Dask cluster whose workers all see ROOT (without --dask-address a "
                                 "temporary local cluster; needs `pip install -e .[dask]`)")
    else:
        tuning.add_argument("--task-runner", choices=("threads", "dask"), default="threads",
                            help="where copy tasks run: threads in this process (default), or an existing Dask "
                                 "cluster (needs `pip install -e .[dask]`)")
    tuning.add_argument("--dask-address", metavar="tcp://HOST:8786", help="the Dask scheduler for --task-runner dask")
    tuning.add_argument("--files-in-flight", type=_positive, default=16,
                        help="files copied at once, across all copy tasks (default 16)")
    tuning.add_argument("--single-put-mib", type=_positive, default=64,
                        help="files up to this size go up in one request (default 64)")
    tuning.add_argument("--block-size-mib", type=_positive, default=8,
                        help="larger files go up in blocks of this size (default 8)")
    tuning.add_argument("--blocks-in-flight", type=_positive, default=4, help="blocks at once per large file (default 4)")
    add_patience_options(p)
    return p


def add_patience_options(p: argparse.ArgumentParser) -> None:
    """--retries and --storage-timeout: how patient a run is with storage (site_backup/retry.py)."""
    group = p.add_argument_group("storage retries")
    group.add_argument("--retries", type=_not_negative, default=RetryPolicy.retries, metavar="N",
                       help=f"the run's retry budget: storage requests it may try again (each success earns "
                            f"back half a retry; default {RetryPolicy.retries})")
    group.add_argument("--storage-timeout", type=_seconds, default=RetryPolicy.storage_timeout, metavar="SECONDS",
                       help=f"end the run (exit 1) when storage gives no answer for this long "
                            f"(default {RetryPolicy.storage_timeout:g})")


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum`, else a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {minimum} or more")
        return value

    return parse


_not_negative, _positive = _whole_number(0), _whole_number(1)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value



def flow_parameters(args: argparse.Namespace) -> dict:
    """Check the arguments (ConfigurationError names the fix) and return the flow's parameters."""
    compile_patterns(args.include)
    compile_patterns(args.exclude)
    shard = Shard.parse(args.shard, args.shard_by)
    if shard is None and args.shard_by != "path":
        raise ConfigurationError("--shard-by says how to split the tree, --shard which part to back up: give --shard K/N too")
    check_mirror(shard, args.delete_missing)
    if args.max_delete is not None:
        if not args.delete_missing:
            raise ConfigurationError("--max-delete limits what --delete-missing deletes: give --delete-missing too, "
                                     "or leave out --max-delete")
        DeleteLimit.parse(args.max_delete)
    if args.verify:
        if shard is not None:
            raise ConfigurationError("--verify checks the whole tree: leave out --shard")
        if args.delete_missing:
            raise ConfigurationError("--delete-missing deletes blobs and --verify only reads: give one of them")
        return dict(
            root_directory=check_root(args.root), container=args.container, prefix=args.prefix,
            credentials_block=args.credentials_block, include=args.include, exclude=args.exclude,
            follow_symlinks=args.follow_symlinks, files_per_batch=args.files_per_batch,
            mib_per_batch=args.mib_per_batch, retries=args.retries, storage_timeout=args.storage_timeout,
        )
    return dict(
        root_directory=check_root(args.root),
        container=args.container,
        prefix=args.prefix,
        credentials_block=args.credentials_block,
        include=args.include,
        exclude=args.exclude,
        follow_symlinks=args.follow_symlinks,
        dry_run=args.dry_run,
        refresh=args.refresh,
        checkpoint_block=args.checkpoint_block,
        checkpoint_days=args.checkpoint_days,
        files_per_batch=args.files_per_batch,
        mib_per_batch=args.mib_per_batch,
        files_in_flight=args.files_in_flight,
        single_put_mib=args.single_put_mib,
        block_size_mib=args.block_size_mib,
        blocks_in_flight=args.blocks_in_flight,
        retries=args.retries,
        storage_timeout=args.storage_timeout,
        **({"delete_missing": True} if args.delete_missing else {}),
        **({"max_delete": args.max_delete} if args.max_delete is not None else {}),
        **({"shard": str(shard), "shard_by": args.shard_by} if shard else {}),
    )


def prefect_settings_for_this_run() -> tuple[dict, str]:
    """Use the configured Prefect server; else one running at the local default address
    (`make server`); else Prefect's temporary server, with a start-up timeout long
    enough for its first start (setting up its database can take longer than the 20 s default)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
    )

    settings = get_current_settings()
    quick = _quick_exit_settings()
    if settings.api.url:
        return quick, ""
    if _answers(LOCAL_PREFECT_API + "/health"):
        return {**quick, PREFECT_API_URL: LOCAL_PREFECT_API}, ""
    notice = (
        "No Prefect server configured or running at 127.0.0.1:4200: starting a temporary one for this run "
        "(10-40 s). `make server` starts one that lets a run start uploading in about 1 s."
    )
    timeout = max(settings.server.ephemeral.startup_timeout_seconds, 180)
    # Analytics off: offline, the temporary server would log a telemetry error every run.
    return {**quick, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout,
            PREFECT_SERVER_ANALYTICS_ENABLED: False}, notice


def _quick_exit_settings() -> dict:
    """No flow-run heartbeats for a run started here, unless the environment asks for them.
    Prefect's heartbeat thread sleeps in 1 s steps and the run waits for it to notice the
    end, which adds up to 1 s to every run; a run from a terminal has a person
    watching it, and deployments (run by a worker, not by this function) keep heartbeats."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    if {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"} & set(os.environ):
        return {}
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class _ProgressLine:
    """A live line on stderr while the run goes on (rich.progress, drawn twice a second):
    files and bytes checked against the listing, bytes sent, rates. It is drawn through
    the console of Prefect's log handler, so log lines print above it, never across it,
    and it is gone once the run ends."""

    def __init__(self, enabled: bool):
        self.enabled, self.stop, self.display, self.drawer = enabled, threading.Event(), None, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn
            from rich.table import Column

            from .progress import progress

            # Colours by name: Prefect's console has its own theme, without rich's "bar.*" styles.
            bar = BarColumn(bar_width=24, style="grey23", complete_style="cyan", finished_style="green",
                            pulse_style="cyan")
            self.display = Progress(bar,
                                TextColumn("{task.description}", markup=False,
                                           table_column=Column(no_wrap=True, overflow="ellipsis")),
                                console=_log_console(), transient=True, auto_refresh=False,
                                redirect_stdout=False)  # stdout is the summary's, maybe a pipe or a file
            self.task = self.display.add_task(progress.line(), total=None)
            self.display.start()
            # rich hides the cursor while it draws and shows it again on stop; a run that ends
            # by os._exit (a second signal, the grace timeout) never stops it, so keep it shown.
            self.display.console.show_cursor(True)
            self.drawer = threading.Thread(target=self._loop, daemon=True)
            self.drawer.start()
        return self

    def _loop(self):
        from .progress import progress

        while not self.stop.wait(0.5):
            self.display.update(self.task, description=progress.line(), completed=progress.bytes_done,
                            total=progress.bytes_expected or None, refresh=True)

    def __exit__(self, *exc):
        self.stop.set()
        if self.display is not None:
            self.drawer.join(2)
            self.display.stop()


def _log_console():
    """The rich console Prefect's log lines go through (its handler on the root logger), or
    a console of our own on stderr when Prefect's logging is configured without one."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler
    from rich.console import Console

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and handler.stream is sys.stderr:
            return handler.console
    return Console(stderr=True)


def main(flow, argv: list[str] | None = None) -> int:
    """Run the backup flow (or with --verify the verify flow) from the command line;
    returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        destination = Destination.checked(args.container, args.prefix, args.credentials_block)
        parameters = flow_parameters(args)
        if args.verify:
            from flows.verify_backup import verify_backup as flow
        flow = flow.with_options(task_runner=task_runner(args))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    show_progress = not args.no_progress and not args.verify and args.task_runner == "threads" and sys.stderr.isatty()
    return run_flow(flow, parameters, destination, create=not args.verify, as_json=args.json,
                    show_progress=show_progress)


def task_runner(args: argparse.Namespace):
    """The task runner the command line asks for."""
    if args.task_runner == "dask":
        DaskTaskRunner = import_dask_runner()
        # Without an address, prefect-dask starts a temporary local cluster.
        return DaskTaskRunner(address=args.dask_address) if args.dask_address else DaskTaskRunner()
    from tasks.copy_batch import CopyTaskRunner

    return CopyTaskRunner(max_workers=args.parallel_batches)


def build_sharded_parser() -> argparse.ArgumentParser:
    """The backup's options (without --verify and --shard), the number of shards, and where they run."""
    p = build_parser(sharded=True)
    group = p.add_argument_group("shards")
    group.add_argument("--shards", type=_positive, default=4, metavar="N", help="parts to split the tree into "
                       "(default 4), e.g. the number of workers")
    group.add_argument("--deployment", default="backup-site-content/shard", metavar="FLOW/DEPLOYMENT",
                       help="the backup deployment each shard runs as (default backup-site-content/shard)")
    group.add_argument("--shard-retries", type=_not_negative, default=2, metavar="N",
                       help="start a failed or crashed shard again up to N times (default 2)")
    return p


def sharded_main(flow, argv: list[str] | None = None) -> int:
    """Run the sharded backup flow from the command line; returns the exit code."""
    args = build_sharded_parser().parse_args(argv)
    args.shard, args.verify, args.delete_missing, args.max_delete = None, False, False, None
    try:
        destination = Destination.checked(args.container, args.prefix, args.credentials_block)
        parameters = flow_parameters(args)
        if args.task_runner == "dask":
            import_dask_runner()
        elif prefect_settings_for_this_run()[1]:  # no server: a temporary one has no workers
            raise ConfigurationError(
                "the shards run on the workers of a Prefect server, and none is configured or running at "
                "127.0.0.1:4200: `make server`, `make deploy` and `make worker` (or set PREFECT_API_URL), or "
                "use --task-runner dask")
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parameters.update(shards=args.shards, shard_by=args.shard_by, deployment=args.deployment,
                      shard_retries=args.shard_retries, task_runner=args.task_runner, dask_address=args.dask_address)
    return run_flow(flow, parameters, destination, create=True, as_json=args.json, show_progress=False)


def import_dask_runner():
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigurationError("--task-runner dask needs prefect-dask: `pip install -e '.[dask]'`") from None
    return DaskTaskRunner


def build_restore_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python flows/restore_site_content.py",
        description="Restore a backup from Azure Blob Storage (or the local Azurite) into a folder.",
        epilog=(
            "Storage settings as for the backup. Exit codes: 0 every blob restored or already there, "
            "1 some blobs failed or were refused (the rest were restored) or storage stopped answering, "
            "2 bad input or configuration, 130 and 143 stopped by Ctrl-C and SIGTERM."
        ),
    )
    p.add_argument("container", metavar="CONTAINER", help="blob container holding the backup")
    p.add_argument("target", metavar="TARGET", nargs="?", help="folder to restore into (created if missing)")
    p.add_argument("--prefix", default="", help="restore only blobs under this prefix (it is not part of the paths)")
    history = p.add_argument_group("history")
    history.add_argument("--list", action="store_true",
                         help="list the backup runs of this destination (time, run id, files, bytes, outcome); "
                              "restore nothing")
    history.add_argument("--run", metavar="ID", help="restore the tree as this backup run saw it (an id from --list, "
                                                     "or a unique start of it)")
    history.add_argument("--check", action="store_true",
                         help="with --run or --as-of: check that every file of that run is still stored (the "
                              "blob or a snapshot with the recorded size and MD5); restore nothing")
    history.add_argument("--as-of", metavar="TIME",
                         help="restore the tree as the last backup finished by TIME saw it (ISO 8601, e.g. "
                              "2026-11-28T22:15:00Z, or a date: its end; UTC without an offset)")
    p.add_argument("--credentials-block", metavar="NAME", help="saved prefect-azure AzureBlobStorageCredentials block")
    p.add_argument("--overwrite", action="store_true", help="replace files in TARGET that differ from the backup")
    p.add_argument("--refresh", action="store_true", help="ignore the checkpoints of an interrupted restore")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--files-per-batch", type=_positive, default=1000, help="files per restore task (default 1000)")
    add_patience_options(p)
    return p


def restore_main(flow, argv: list[str] | None = None) -> int:
    """Run the restore flow from the command line; returns the exit code."""
    args = build_restore_parser().parse_args(argv)
    try:
        destination = Destination.checked(args.container, args.prefix, args.credentials_block)
        # The history commands run no flow: their budget comes from the same options.
        budget = StorageBudget(RetryPolicy(args.retries, args.storage_timeout), storage_account(destination).url)
        if args.list:
            return list_history(destination, args.json, budget)
        if args.run and args.as_of:
            raise ConfigurationError("--run and --as-of both choose a run: give one of them")
        if args.check and not (args.run or args.as_of):
            raise ConfigurationError("--check needs --run or --as-of: name the run to check")
        if not args.target and not args.check:
            raise ConfigurationError("no TARGET folder given: name the folder to restore into (or use --list)")
        if args.run or args.as_of:
            args.run = choose_run(destination, args.run, args.as_of, budget)
        if args.check:
            return check_history(destination, args.run, args.json, budget)
        if os.path.exists(args.target) and not os.path.isdir(args.target):
            raise ConfigurationError(f"target {args.target!r} is not a folder: give a folder to restore into")
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StorageUnavailable, RunStopped) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    parameters = dict(container=args.container, target_directory=os.path.abspath(args.target), prefix=args.prefix,
                      credentials_block=args.credentials_block, overwrite=args.overwrite, refresh=args.refresh,
                      files_per_batch=args.files_per_batch, retries=args.retries,
                      storage_timeout=args.storage_timeout,
                      run_id=args.run or None)
    return run_flow(flow, parameters, destination, create=False, as_json=args.json, show_progress=False)


def build_prune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python flows/prune_backups.py",
        description="Delete backup runs outside a retention policy, and the snapshots only they needed "
                    "(restic's --keep-* rules; days, weeks and months in UTC).",
        epilog="Exit codes: 0 done, 1 the prune failed, 2 bad input, or a backup of the destination is running.",
    )
    p.add_argument("container", metavar="CONTAINER", help="blob container holding the backup")
    p.add_argument("--prefix", default="", help="the backup's blob name prefix (default: none)")
    p.add_argument("--credentials-block", metavar="NAME", help="saved prefect-azure AzureBlobStorageCredentials block")
    for rule, what in (("last", "the N newest runs"), ("daily", "the newest run of each of the last N days"),
                       ("weekly", "the newest run of each of the last N weeks"),
                       ("monthly", "the newest run of each of the last N months")):
        p.add_argument(f"--keep-{rule}", type=_positive, default=0, metavar="N", help=f"keep {what}")
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_patience_options(p)
    return p


def prune_main(flow, argv: list[str] | None = None) -> int:
    """Run the prune flow from the command line; returns the exit code."""
    args = build_prune_parser().parse_args(argv)
    try:
        destination = Destination.checked(args.container, args.prefix, args.credentials_block)
        if not (args.keep_last or args.keep_daily or args.keep_weekly or args.keep_monthly):
            raise ConfigurationError("no retention policy: give at least one of --keep-last, --keep-daily, "
                                     "--keep-weekly, --keep-monthly (prune never deletes every run)")
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parameters = dict(container=args.container, prefix=args.prefix, credentials_block=args.credentials_block,
                      keep_last=args.keep_last, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                      keep_monthly=args.keep_monthly, dry_run=args.dry_run, retries=args.retries,
                      storage_timeout=args.storage_timeout)
    return run_flow(flow, parameters, destination, create=False, as_json=args.json, show_progress=False)


def choose_run(destination: Destination, run_id: str | None, as_of: str | None, budget: StorageBudget) -> str:
    """The full id of the run --run or --as-of names; ConfigurationError when none fits,
    StorageUnavailable when storage stops answering within `budget`."""
    from .history import list_runs, open_history_store, parse_as_of, pick_run

    if as_of:
        parse_as_of(as_of)  # a malformed time is refused before any request
    try:
        runs = list_runs(open_history_store(destination, budget), destination.prefix)
    except (ConfigurationError, StorageUnavailable, RunStopped):
        raise
    except Exception as exc:
        raise ConfigurationError(f"cannot read the backup history: {redact(str(exc))}") from None
    return pick_run(runs, run_id, as_of).run_id


def check_history(destination: Destination, run_id: str, as_json: bool, budget: StorageBudget) -> int:
    """Check that a run's content is all still stored; 0 when it is, 1 when some is gone."""
    import json

    from .accounts import open_store
    from .history import list_runs, open_history_store, pick_run
    from .history_restore import check_run

    history = open_history_store(destination, budget)
    run = pick_run(list_runs(history, destination.prefix), run_id)
    found, missing = check_run(history, run, open_store(destination, budget), destination.prefix)
    if as_json:
        print(json.dumps({"run_id": run.run_id, "files": found + len(missing), "stored": found,
                          "missing": [{"path": p.path, "reason": p.reason} for p in missing]}, indent=2))
    else:
        print(f"run {run.run_id}: {found + len(missing)} files, {found} stored, {len(missing)} missing")
        for p in missing:
            print(f"  {p.path}  {p.reason}")
    return EXIT_INCOMPLETE if missing else 0


def list_history(destination: Destination, as_json: bool, budget: StorageBudget) -> int:
    """Print the runs of the destination, oldest first (no flow run: a listing only);
    1 when storage stops answering within `budget`."""
    import json

    from .history import history_container, list_runs, open_history_store
    from .units import human_bytes

    try:
        runs = list_runs(open_history_store(destination, budget), destination.prefix)
    except (StorageUnavailable, RunStopped):
        raise
    except Exception as exc:
        print(f"error: cannot read the backup history: {redact(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if as_json:
        print(json.dumps([r.as_row() for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no backup history for {destination.container}/{destination.prefix} "
              f"(manifests live in the container {history_container(destination.container)!r})")
        return 0
    print(f"{'finished (UTC)':<27}  {'run id':<36}  {'files':>9}  {'bytes':>10}  outcome")
    for r in runs:
        print(f"{r.finished.strftime('%Y-%m-%dT%H:%M:%S.%fZ')[:-4] + 'Z':<27}  {r.run_id:<36}  {r.files:>9}  "
              f"{human_bytes(r.bytes):>10}  {r.outcome}")
    return 0


def run_flow(flow, parameters: dict, destination: Destination, *, create: bool, as_json: bool,
             show_progress: bool) -> int:
    """Pick the Prefect server, check the storage, run the flow, print its summary.
    SIGTERM and Ctrl-C stop the run within seconds (exit 143 or 130)."""
    from prefect.exceptions import TerminationSignal
    from prefect.settings import temporary_settings

    # Everything imported so far (Prefect, pydantic, the SDK) lives until exit: keep it out of
    # the collector's full passes during the run, and out of the final ones at exit, which
    # would otherwise be a sizeable share of a short run.
    gc.freeze()
    gc.enable()  # the command-line entry points turn it off while importing
    policy = RetryPolicy(parameters["retries"], parameters["storage_timeout"])
    previous = _handle_stop_signals()
    on_stop(_grace_timer)  # for this run only: a test process must never leave on its own
    try:
        updates, notice = prefect_settings_for_this_run()
        with temporary_settings(updates=updates):
            # Checked before the flow starts, so a wrong address or key is one clear line,
            # not a failed flow run with tracebacks.
            prepare(destination, create=create, policy=policy)
            if notice:
                print(notice, file=sys.stderr)
            with _ProgressLine(show_progress):
                try:
                    summary = flow(**parameters)
                except RunFailed as exc:  # what was done is still reported
                    summary = exc.summary
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, _Stopped, TerminationSignal, RunStopped) as exc:
        return _stopped(exc)
    except Exception as exc:
        if STOP.is_set():
            return _stopped(exc)
        print(f"error: the run failed: {redact(str(exc))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    finally:
        gc.freeze()  # what the run made is not collected again at exit either
        _restore_signals(previous)
        forget_on_stop(_grace_timer)
    if STOP.is_set():
        return _stopped(None)
    print(summary.model_dump_json(indent=2) if as_json else summary.to_text())
    return summary.exit_code


class _Stopped(BaseException):
    """Raised in the main thread by SIGTERM (BaseException, like KeyboardInterrupt)."""


_signal_seen: list[int] = []
GRACE_SECONDS = 8.0  # then the process leaves whatever is still running: a stop takes under 10 s


def _handle_stop_signals() -> dict:
    """SIGTERM and SIGINT stop the run: no request starts after them, waiting requests are
    woken, unfinished batches are not checkpointed. A second signal, or a run not wound
    down after GRACE_SECONDS, exits at once."""

    def on_signal(signum, frame):
        if _signal_seen:
            os._exit(128 + _signal_seen[0])
        _signal_seen.append(signum)
        request_stop(f"stopped by {signal.Signals(signum).name}", signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else _Stopped()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return previous


class _GraceTimer:
    """On a stop, however it came (our handler, or Prefect's turning SIGTERM into an
    exception in the flow), leave after GRACE_SECONDS if the run has not wound down: an SDK
    download waiting in a socket read cannot be woken."""

    def __init__(self):
        self.started = False

    def abort_all(self) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=_leave_after_grace, daemon=True).start()


_grace_timer = _GraceTimer()


def _restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _leave_after_grace() -> None:
    time.sleep(GRACE_SECONDS)
    signum = _stop_signal(None)
    sys.stderr.write(f"{_stop_line(signum)} (left requests still waiting after {GRACE_SECONDS:g} s)\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def _stop_line(signum: int) -> str:
    return (f"stopped by {signal.Signals(signum).name}: finished batches are checkpointed, unfinished ones are not; "
            f"run the same command again to resume")


def _stop_signal(exc) -> int:
    """The signal that stopped the run: ours, Prefect's (SIGTERM) or the stop's."""
    if _signal_seen:
        return _signal_seen[0]
    return getattr(exc, "signal", None) or (stop_signal[0] if stop_signal else signal.SIGINT)


def _stopped(exc) -> int:
    """The one line and exit code of a run that was stopped (130 for Ctrl-C, 143 for SIGTERM)."""
    signum = _stop_signal(exc)
    print(_stop_line(signum), file=sys.stderr)
    return 128 + signum
