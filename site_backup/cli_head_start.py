"""The command line's head start: storage answers while Prefect imports.

Importing Prefect takes longer than what a no-change run asks of storage tens of ms away:
the check of the destination (three requests) and one flat listing of it, which confirms
the checkpoints and answers the copies. The backup script calls `begin` before it imports
Prefect, and both start in threads (site_backup/ahead.py). The command line waits for the
check before the flow starts (`checked`); the flow's prepare-destination takes its answer
and its list-destination the listing, each only for the destination, policy and account it
was started for, in this process. Both are as much the run's own as answers read after its
lock: the lock keeps prunes away, a prune never deletes a current blob, and other writers
take no lock either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io

from . import ahead
from .accounts import open_store, storage_account
from .cli_options import build_parser, flow_parameters
from .destination import Destination, prepare, prepare_ahead
from .names import blob_folder
from .remote import list_ahead
from .retry import RetryPolicy, StorageBudget


def begin(argv: list[str] | None) -> None:
    """Start the storage check and, for a run that reads it, the destination's listing.
    Arguments with a mistake, or naming a credentials block (loading it needs Prefect),
    start nothing here: the run itself reports the mistake, or starts both when it has
    loaded the block."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(argv)
        flow_parameters(args)
        destination = Destination.checked(args.container, args.prefix, args.credentials_block)
        policy = RetryPolicy.checked(args.retries, args.storage_timeout)
        if args.verify or args.credentials_block:
            return
        storage_account(destination)  # once, here, for both threads
    except (SystemExit, Exception):  # the run checks all this again and says what is wrong
        return
    if reads_listing(args):
        start_listing(destination, policy)
    prepare_ahead(destination, policy)


def reads_listing(args: argparse.Namespace) -> bool:
    """Whether the run reads the flat listing of its destination (every backup but a dry
    run) in this process (its tasks in threads, not on Dask workers)."""
    return not (args.dry_run or args.verify) and args.task_runner == "threads"


def start_listing(destination: Destination, policy: RetryPolicy) -> None:
    """List the destination in a thread, for the run's list-destination task to take."""
    url = storage_account(destination).url
    list_ahead(open_store(destination, StorageBudget(policy, url)), url, destination.container,
               blob_folder(destination.prefix))


def checked(destination: Destination, create: bool, policy: RetryPolicy, listing: bool) -> None:
    """Wait for the storage check (ConfigurationError names the fix): the one `begin`
    started, else one started now, with the listing alongside when `listing`. The flow's
    prepare-destination takes the check's answer (destination.prepared)."""
    if not create:
        prepare(destination, create=False, policy=policy)
        return
    check = ahead.started(("prepared", destination, policy))
    if check is None:
        if listing:
            start_listing(destination, policy)
        check = prepare_ahead(destination, policy)
    check.result()


def forget() -> None:
    """Drop what was started and not taken: a later run in this process starts its own."""
    ahead.forget()
