"""Check the destination before any work: reachable, credentials accepted, container there."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.destination import Destination, prepare
from tasks.retry import transient_only


@task(name="prepare-destination", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=transient_only)
def prepare_destination(destination: Destination) -> tuple[Destination, bool]:
    """The destination with its account URL filled in, and whether its prefix is empty."""
    return prepare(destination)
