"""The command lines' options: the backup's (and the sharded backup's), the restore's and the
prune's parsers, and the backup flow's parameters from them."""

from __future__ import annotations

import argparse

from .errors import ConfigurationError
from .files import check_root
from .globs import compile_patterns
from .in_flight import FILES_IN_FLIGHT, START
from .mirror import DEFAULT_MAX_DELETE, DeleteLimit
from .retry import RetryPolicy
from .shards import SHARD_BY, Shard, check_mirror
from .tiers import check_access_tier


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
    p.add_argument("--access-tier", metavar="Hot|Cool|Cold",
                   help="the access tier uploads are written in (default: the account's); Archive is refused")
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
    tuning.add_argument("--files-in-flight", type=_positive, default=FILES_IN_FLIGHT,
                        help=f"at most this many files copied at once, across all copy tasks (default "
                             f"{FILES_IN_FLIGHT}; the run starts at {START} and adapts to storage)")
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
    access_tier = check_access_tier(getattr(args, "access_tier", None))
    if args.verify:
        if shard is not None:
            raise ConfigurationError("--verify checks the whole tree: leave out --shard")
        if args.delete_missing:
            raise ConfigurationError("--delete-missing deletes blobs and --verify only reads: give one of them")
        if access_tier:
            raise ConfigurationError("--access-tier sets the tier of uploads and --verify uploads nothing: give one of them")
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
        **({"access_tier": access_tier} if access_tier else {}),
    )


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
    p.add_argument("--rehydrate", nargs="?", const="Standard", metavar="Standard|High",
                   help="ask Azure to rehydrate archived files (Archive tier) to Hot: Standard takes up to 15 hours, "
                        "High up to 1 hour; the restore reports them, run it again once they are rehydrated")
    p.add_argument("--refresh", action="store_true", help="ignore the checkpoints of an interrupted restore")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--files-per-batch", type=_positive, default=1000, help="files per restore task (default 1000)")
    add_patience_options(p)
    return p


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
