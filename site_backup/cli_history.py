"""The history commands of the restore's command line: list the runs, check one, pick one."""

from __future__ import annotations

import sys

from .destination import Destination
from .errors import ConfigurationError, redact
from .retry import RunStopped, StorageBudget, StorageUnavailable
from .summary import EXIT_BAD_INPUT, EXIT_INCOMPLETE


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
