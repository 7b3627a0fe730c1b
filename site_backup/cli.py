"""The command lines of the flows: parse, check, pick a Prefect server, run, report."""

from __future__ import annotations

import argparse
import gc
import os
import sys

from .cli_head_start import checked, reads_listing
from .cli_head_start import forget as forget_head_start
from .cli_history import check_history, choose_run, list_history
from .cli_options import build_parser, build_prune_parser, build_restore_parser, build_sharded_parser, flow_parameters
from .cli_prefect import prefect_settings_for_this_run
from .cli_progress import ProgressLine
from .cli_stop import Stopped, grace_timer, handle_stop_signals, restore_signals, stopped_exit
from .destination import Destination, storage_account
from .errors import ConfigurationError, redact
from .retry import STOP, RetryPolicy, RunStopped, StorageBudget, StorageUnavailable, forget_on_stop, on_stop
from .summary import EXIT_BAD_INPUT, EXIT_INCOMPLETE, RunFailed
from .tiers import check_rehydrate


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
                    show_progress=show_progress, listing=reads_listing(args))


def task_runner(args: argparse.Namespace):
    """The task runner the command line asks for."""
    if args.task_runner == "dask":
        DaskTaskRunner = import_dask_runner()
        # Without an address, prefect-dask starts a temporary local cluster.
        return DaskTaskRunner(address=args.dask_address) if args.dask_address else DaskTaskRunner()
    from tasks.copy_batch import CopyTaskRunner

    return CopyTaskRunner(max_workers=args.parallel_batches)


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
        rehydrate = check_rehydrate(args.rehydrate)
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
                      run_id=args.run or None, **({"rehydrate": rehydrate} if rehydrate else {}))
    return run_flow(flow, parameters, destination, create=False, as_json=args.json, show_progress=False)


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


def run_flow(flow, parameters: dict, destination: Destination, *, create: bool, as_json: bool,
             show_progress: bool, listing: bool = False) -> int:
    """Pick the Prefect server, check the storage, run the flow, print its summary; with
    `listing`, the destination's listing starts with the check (cli_head_start).
    SIGTERM and Ctrl-C stop the run within seconds (exit 143 or 130)."""
    from prefect.exceptions import TerminationSignal
    from prefect.settings import temporary_settings

    # Everything imported so far (Prefect, pydantic, the SDK) lives until exit: keep it out of
    # the collector's full passes during the run, and out of the final ones at exit, which
    # would otherwise be a sizeable share of a short run.
    gc.freeze()
    gc.enable()  # the command-line entry points turn it off while importing
    policy = RetryPolicy(parameters["retries"], parameters["storage_timeout"])
    previous = handle_stop_signals()
    on_stop(grace_timer)  # for this run only: a test process must never leave on its own
    try:
        updates, notice = prefect_settings_for_this_run()
        with temporary_settings(updates=updates):
            # Checked before the flow starts, so a wrong address or key is one clear line,
            # not a failed flow run with tracebacks.
            checked(destination, create, policy, listing)
            if notice:
                print(notice, file=sys.stderr)
            with ProgressLine(show_progress):
                try:
                    summary = flow(**parameters)
                except RunFailed as exc:  # what was done is still reported
                    summary = exc.summary
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Stopped, TerminationSignal, RunStopped) as exc:
        return stopped_exit(exc)
    except Exception as exc:
        if STOP.is_set():
            return stopped_exit(exc)
        print(f"error: the run failed: {redact(str(exc))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    finally:
        gc.freeze()  # what the run made is not collected again at exit either
        forget_head_start()
        restore_signals(previous)
        forget_on_stop(grace_timer)
    if STOP.is_set():
        return stopped_exit(None)
    print(summary.model_dump_json(indent=2) if as_json else summary.to_text())
    return summary.exit_code
