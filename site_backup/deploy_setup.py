"""scripts/deploy's steps besides `prefect deploy`, in one process (each `prefect` command
spends seconds of CPU starting): prefect-azure's block types, a credentials block for the
storage configured here, the work pool, and the alert automations (site_backup/alerts.py).

    python -m site_backup.deploy_setup POOL

The credentials block is for the storage this environment is configured for
(AZURE_STORAGE_CONNECTION_STRING, else AZURE_STORAGE_ACCOUNT_URL, else the local Azurite on
$AZURITE_PORT), so runs started from the UI can name it (parameter credentials_block); runs
without it use the worker's environment.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys

from . import alerts
from .credentials import azurite_connection_string


async def register_block_types(client) -> int:
    """Every block type of prefect-azure, as `prefect block register -m prefect_azure` does,
    so the UI offers them; returns how many."""
    import prefect_azure
    from prefect.blocks.core import Block, InvalidBlockRegistration

    registered = 0
    for _, cls in inspect.getmembers(prefect_azure):
        if cls is not None and Block.is_block_class(cls):
            try:
                await cls.aregister_type_and_schema(client=client)
                registered += 1
            except InvalidBlockRegistration:
                pass  # an abstract base, as the command skips it
    return registered


async def save_credentials_block() -> str:
    """The credentials block for the configured storage; returns what it says."""
    from prefect_azure.credentials import AzureBlobStorageCredentials
    from pydantic import SecretStr

    if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        name, what = "site-backup-storage", "AZURE_STORAGE_CONNECTION_STRING"
        block = AzureBlobStorageCredentials(connection_string=SecretStr(os.environ["AZURE_STORAGE_CONNECTION_STRING"]))
    elif os.environ.get("AZURE_STORAGE_ACCOUNT_URL"):
        name, what = "site-backup-storage", f"{os.environ['AZURE_STORAGE_ACCOUNT_URL']} with DefaultAzureCredential"
        block = AzureBlobStorageCredentials(account_url=os.environ["AZURE_STORAGE_ACCOUNT_URL"])
    else:
        url = f"http://127.0.0.1:{os.environ.get('AZURITE_PORT', '10000')}/devstoreaccount1"
        name, what = "local-azurite", f"the local Azurite at {url}"
        block = AzureBlobStorageCredentials(connection_string=SecretStr(azurite_connection_string(url)))
    await block.asave(name, overwrite=True)
    return f"credentials block {name!r}: {what}"


def engine_command() -> str:
    """The command a flow run of the pool starts: Prefect's engine on this checkout's Python."""
    from prefect.utilities.processutils import command_to_string

    return command_to_string([sys.executable, "-m", "prefect.engine"])


def process_job_template() -> dict:
    """`prefect work-pool create --type process`'s job template with `command` set. Without a
    command, Prefect 3.9's process worker starts each run through its workspace supervisor: a
    Python process that imports Prefect, runs the pull steps and then becomes the engine,
    which imports Prefect again. With it, the engine runs the pull steps itself: one Python
    start per run instead of two (docs/deployment.md)."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = engine_command()
    return template


async def ensure_work_pool(client, name: str) -> str | None:
    """A process work pool named `name` (`prefect deploy` refuses a pool that does not exist
    yet) with `process_job_template()`; returns what was done, or None when the pool exists
    (left as it is: it may be another's)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        await client.read_work_pool(name)
        return None
    except ObjectNotFound:
        pass
    await client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=process_job_template()))
    return f"created process work pool {name!r} (runs start with {engine_command()})"


async def set_up(pool: str) -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        said = [f"registered the prefect-azure block types ({await register_block_types(client)})",
                await save_credentials_block(), await ensure_work_pool(client, pool)]
    return [line for line in said if line]


def main(argv: list[str]) -> int:
    """Everything but the deployments themselves, then the alerts (alerts.main)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    if len(argv) != 1:
        print("usage: python -m site_backup.deploy_setup WORK_POOL", file=sys.stderr)
        return 2
    try:
        said = asyncio.run(set_up(argv[0]))
    except (httpx.TransportError, OSError) as exc:
        print(f"error: the Prefect server at {PREFECT_API_URL.value() or '(PREFECT_API_URL not set)'} does not "
              f"answer ({type(exc).__name__}: {exc}): start it (`make server`) or set PREFECT_API_URL",
              file=sys.stderr)
        return 1
    for line in said:
        print(line)
    return alerts.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
