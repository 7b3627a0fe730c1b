"""The list-files task: walk the tree into batches (the sample's E2_GetFileList)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from site_backup.files import FileListing, list_batches
from site_backup.shards import Shard
from tasks.errors import task_reports_configuration_error


@task(name="list-files", cache_policy=NO_CACHE)
@task_reports_configuration_error
def list_files(
    root: str,
    include: list[str],
    exclude: list[str],
    follow_symlinks: bool,
    max_files: int,
    max_bytes: int,
    shard: Shard | None = None,
) -> FileListing:
    """Every regular file under `root` (of one shard, if given), as batches; links, special
    files and unreadable folders are reported in the listing instead."""
    return list_batches(
        root, include=include, exclude=exclude, follow_symlinks=follow_symlinks,
        max_files=max_files, max_bytes=max_bytes, shard=shard,
    )
