"""The command line's head start: storage answers while Prefect imports.

Importing Prefect takes longer than what a no-change run asks of storage tens of ms away:
the check of the destination (three requests) and one flat listing of it, which confirms
the checkpoints. The backup script calls `begin` before it imports Prefect, and both start
in threads; the run then takes their answers: `checked` the check's, the flow's
list-destination task the listing (site_backup/remote.listed_ahead), each only for the
destination and in the process it was started for. The listing is as much the run's own
as one read after its lock: the lock keeps prunes away, and a prune never deletes a current
blob; other writers take no lock either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import threading
from concurrent.futures import Future

from .accounts import open_store, storage_account
from .cli_options import build_parser, flow_parameters
from .destination import Destination, prepare
from .names import blob_folder
from .remote import forget_listings_ahead, list_ahead
from .retry import RetryPolicy, StorageBudget

_begun: list[tuple[Destination, RetryPolicy, Future]] = []  # the check begun, at most one


def begin(argv: list[str] | None) -> None:
    """Start the storage check and, for a run that confirms checkpoints, the destination's
    listing. Arguments with a mistake, or naming a credentials block (loading it needs
    Prefect), start nothing here: the run itself reports the mistake, or starts the
    listing when it has loaded the block."""
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
    if confirms_by_listing(args):
        start_listing(destination, policy)
    future: Future = Future()
    _begun[:] = [(destination, policy, future)]

    def check() -> None:
        try:
            future.set_result(prepare(destination, create=True, policy=policy))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=check, name="storage-check", daemon=True).start()


def confirms_by_listing(args: argparse.Namespace) -> bool:
    """Whether the run reads the flat listing of its destination: a run that may take
    batches from checkpoints, with its tasks in this process."""
    return not (args.refresh or args.dry_run or args.verify) and args.task_runner == "threads"


def start_listing(destination: Destination, policy: RetryPolicy) -> None:
    """List the destination in a thread, for the run's list-destination task to take."""
    url = storage_account(destination).url
    list_ahead(open_store(destination, StorageBudget(policy, url)), url, destination.container,
               blob_folder(destination.prefix))


def checked(destination: Destination, create: bool, policy: RetryPolicy, listing: bool) -> None:
    """`prepare` of the destination (ConfigurationError names the fix): the check `begin`
    started for it, else one now, with the listing started alongside when `listing`."""
    begun = _begun.pop() if _begun else None
    if begun is not None and create and begun[:2] == (destination, policy):
        begun[2].result()
        return
    if listing:
        start_listing(destination, policy)
    prepare(destination, create=create, policy=policy)


def forget() -> None:
    """Drop what was started and not taken: a later run in this process starts its own."""
    _begun.clear()
    forget_listings_ahead()
