"""Check the destination before any work: reachable, credentials accepted, container there."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.destination import Destination, prepare_checkpoint_store, prepared
from site_backup.retry import RetryPolicy
from tasks.errors import task_reports_configuration_error


# No task retries here or below: the storage retry policy (site_backup/retry.py) decides.
@task(name="prepare-destination", cache_policy=NO_CACHE)
@task_reports_configuration_error
def prepare_destination(destination: Destination, create: bool = True, policy: RetryPolicy = RetryPolicy()
                        ) -> tuple[Destination, bool]:
    """The destination with its account URL filled in, and whether its prefix is empty
    (the command line's answer when it asked already, site_backup/cli_head_start.py)."""
    return prepared(destination, create=create, policy=policy)


@task(name="prepare-checkpoints", cache_policy=NO_CACHE)
@task_reports_configuration_error
def prepare_checkpoints(block_name: str, policy: RetryPolicy = RetryPolicy()) -> str:
    """Make sure the blob container that holds the checkpoints exists."""
    return prepare_checkpoint_store(block_name, policy)
