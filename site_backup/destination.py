"""Where backups go: the container and prefix, checked, and the pre-flight that makes the
container ready (the credentials are in credentials.py, the clients in accounts.py)."""

from __future__ import annotations

import re
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Annotated, Any, Callable

from pydantic import Field

from . import ahead
from .accounts import blob_service_client, storage_account
from .credentials import block_credentials
from .errors import ConfigurationError, describe
from .names import blob_folder
from .retry import RetryPolicy, StorageBudget, StorageUnavailable, TokenUnavailable
from .sdk_retry import sdk_retry_policy
from .storage import RetryLog

_CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
# The same rule without look-ahead, for JSON Schema and pydantic (whose regex engine has
# none): the Prefect UI's form checks a container name with it before a run is created,
# and shows it in its message. Written with no "](" in it: the UI renders the message as
# markdown, where `[a-z0-9](...)` became a link and its brackets vanished.
CONTAINER_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
ContainerName = Annotated[str, Field(pattern=CONTAINER_PATTERN, min_length=3, max_length=63)]


@dataclass(frozen=True)
class Destination:
    """A container and prefix plus where to find credentials. Holds no secret, so it can
    be a flow or task parameter; `account_url` and `generation` are filled in once connected."""

    container: str
    prefix: str = ""
    credentials_block: str | None = None
    account_url: str = ""
    credentials_source: str = ""
    # The container's ETag when the run started: a deleted and re-created container has a
    # new one, so checkpoints made against the old container stop matching.
    generation: str = ""

    @classmethod
    def checked(cls, container: str, prefix: str = "", credentials_block: str | None = None) -> "Destination":
        """A destination from user input: the container name and prefix validated."""
        return cls(validate_container_name(container), normalize_prefix(prefix), credentials_block)

    def describe(self) -> str:
        where = f"{self.account_url or '?'}/{self.container}"
        return f"{where}/{self.prefix}/" if self.prefix else f"{where}/"


def validate_container_name(name: str) -> str:
    """Return `name` if Azure accepts it as a container name, else explain the rule."""
    if not isinstance(name, str) or not _CONTAINER_NAME.match(name):
        suggestion = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", str(name).lower())).strip("-")
        hint = f" (for example '{suggestion}')" if 3 <= len(suggestion) <= 63 else ""
        raise ConfigurationError(
            f"invalid container name {name!r}: use 3-63 characters, lowercase letters, digits and "
            f"single hyphens, starting and ending with a letter or digit{hint}"
        )
    return name


# Azure's limits on a blob name: 1,024 characters, 254 path segments. A prefix must leave
# room for at least a one-character file name.
MAX_PREFIX_CHARS, MAX_PREFIX_SEGMENTS = 1022, 253


def normalize_prefix(prefix: str) -> str:
    """Blob-name prefix without leading or trailing slashes ('' for none)."""
    prefix = (prefix or "").strip("/")
    if prefix and ("\\" in prefix or any(part in ("", ".", "..") for part in prefix.split("/"))):
        raise ConfigurationError(
            f"invalid prefix {prefix!r}: use folder names separated by single '/', without '.' or '..'"
        )
    if len(prefix) > MAX_PREFIX_CHARS:
        raise ConfigurationError(
            f"invalid prefix {prefix[:40]!r}...: it is {len(prefix)} characters long, and blob names may have "
            f"1024, so the prefix may have at most {MAX_PREFIX_CHARS} characters: shorten it"
        )
    if prefix.count("/") + 1 > MAX_PREFIX_SEGMENTS:
        raise ConfigurationError(
            f"invalid prefix {prefix[:40]!r}...: it has {prefix.count('/') + 1} folders, and blob names may have "
            f"254 segments, so the prefix may have at most {MAX_PREFIX_SEGMENTS} folders: shorten it"
        )
    return prefix


def prepare(destination: Destination, create: bool = True, policy: RetryPolicy = RetryPolicy()
            ) -> tuple[Destination, bool]:
    """Check that storage answers and accepts the credentials, create the container when
    missing (or, with create=False, insist that it exists), note its generation, and tell
    whether the prefix holds no blob yet. Raises ConfigurationError with the fix when it cannot."""
    account = storage_account(destination)
    url, source = account.url, account.source
    # Fail in seconds, not minutes, when nothing listens or the credentials are wrong: one
    # retry, and no longer than the run's own deadline.
    budget = StorageBudget(RetryPolicy(retries=1, storage_timeout=min(policy.storage_timeout, 30)), url)
    destination = replace(destination, account_url=url, credentials_source=source)
    prefix = blob_folder(destination.prefix) or None
    try:
        if account.signed is not None:
            if create:
                _may_refuse(lambda: account.signed.create_container(destination.container, RetryLog(budget)))
            generation = _generation(lambda: account.signed.container_etag(destination.container, RetryLog(budget)))
            first = account.signed.first_blob(destination.container, prefix, RetryLog(budget))
        else:
            from azure.core.exceptions import ResourceExistsError

            container = account.client_for(budget).get_container_client(destination.container)
            if create:
                try:
                    _may_refuse(container.create_container)
                except ResourceExistsError:
                    pass
            generation = _generation(lambda: container.get_container_properties().etag)
            first = next(iter(container.list_blobs(name_starts_with=prefix, results_per_page=1)), None)
    except Exception as exc:
        problem = _storage_problem(exc, destination, url, source)
        if problem is None:
            raise
        raise problem from None
    return replace(destination, generation=generation), first is None


def prepare_ahead(destination: Destination, policy: RetryPolicy) -> Future:
    """Start `prepare` (creating the container when missing) in a thread now; the run's
    `prepared` of the same destination and policy takes its answer (site_backup/ahead.py)."""
    return ahead.start(("prepared", destination, policy), lambda: prepare(destination, True, policy))


def prepared(destination: Destination, create: bool = True, policy: RetryPolicy = RetryPolicy()
             ) -> tuple[Destination, bool]:
    """`prepare`'s answer: the one started ahead for this destination and policy in this
    process (asked again when it failed on anything but the configuration), else one now."""
    return ahead.answered(ahead.take(("prepared", destination, policy)) if create else None,
                          lambda: prepare(destination, create=create, policy=policy), lasting=(ConfigurationError,))


def _may_refuse(create_container: Callable[[], Any]) -> None:
    """Create the container, unless the credentials may not (a SAS for one container, a
    role on the container only): then the listing that follows says whether it exists."""
    try:
        create_container()
    except Exception as exc:
        if getattr(exc, "status_code", None) != 403:
            raise


def _generation(container_etag: Callable[[], str]) -> str:
    """The container's ETag, or "" when the credentials may not read container properties
    (a SAS for blobs only): then only the empty-prefix rule guards the checkpoints."""
    try:
        return container_etag() or ""
    except Exception as exc:
        if getattr(exc, "status_code", None) == 403:
            return ""
        raise


def _storage_problem(exc: Exception, destination: Destination, url: str, source: str) -> ConfigurationError | None:
    """What a failed first request means and how to fix it; None when it is not a
    configuration problem. (azure.core is imported here, on failure only: a run that
    goes well never pays for importing it.)"""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ResourceNotFoundError):
        return ConfigurationError(
            f"container {destination.container!r} does not exist at {url}: check --container (and the account)"
        )
    if isinstance(exc, TokenUnavailable):
        return ConfigurationError(f"{exc.last_problem}, with the credentials from {source}: check the identity "
                                  f"(managed identity, workload identity, `az login`), or raise --storage-timeout")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, StorageUnavailable)):
        fix = (
            "start the local emulator with `make azurite` (or `make run`), or set "
            "AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_ACCOUNT_URL for real Azure"
            if source == "the local Azurite default"
            else f"check the endpoint in {source} and that the storage account is reachable"
        )
        reason = exc.last_problem if isinstance(exc, StorageUnavailable) else describe(exc)
        return ConfigurationError(f"cannot reach blob storage at {url} ({reason}): {fix}")
    if isinstance(exc, ClientAuthenticationError):
        return ConfigurationError(
            f"blob storage at {url} rejected the credentials from {source} ({describe(exc)}): "
            f"check the account key, SAS token or identity"
        )
    if isinstance(exc, HttpResponseError) and exc.status_code in (401, 403):
        return ConfigurationError(
            f"blob storage at {url} refused access with the credentials from {source} "
            f"({describe(exc)}): check the key, SAS permissions (read, write, list, create) or role"
        )
    return None


def prepare_checkpoint_store(block_name: str, policy: RetryPolicy = RetryPolicy()) -> str:
    """Create the container of a saved AzureBlobStorageContainer block (where checkpoints
    go) when it is missing; returns where the checkpoints are, for messages. As patient as
    the run's own first requests (`prepare`): a silent endpoint fails it within the deadline."""
    from azure.core.exceptions import AzureError, ResourceExistsError
    from prefect_azure.blob_storage import AzureBlobStorageContainer

    try:
        block = AzureBlobStorageContainer.load(block_name)
    except ValueError:
        raise ConfigurationError(
            f"no Azure Blob Storage Container block named {block_name!r}: create one in the Prefect UI (Blocks) "
            f"with the container and folder for checkpoints, or leave out --checkpoint-block"
        ) from None
    from .fastblob import DeadlineCredential

    conn_str, account_url, credential, source = block_credentials(block.credentials, f"checkpoint block {block_name!r}")
    budget = StorageBudget(RetryPolicy(retries=1, storage_timeout=min(policy.storage_timeout, 30)))
    client = blob_service_client(conn_str, account_url, DeadlineCredential(credential, budget) if credential else None,
                                 retry_policy=sdk_retry_policy(budget), connection_timeout=budget.connect_timeout(),
                                 read_timeout=budget.policy.storage_timeout)
    try:
        client.get_container_client(block.container_name).create_container()
    except ResourceExistsError:
        pass
    except (AzureError, StorageUnavailable) as exc:
        reason = exc.last_problem if isinstance(exc, StorageUnavailable) else describe(exc)
        raise ConfigurationError(
            f"cannot use the checkpoint container {block.container_name!r} from {source} ({reason}): "
            f"check that block's credentials and that its storage answers"
        ) from None
    return f"{block.container_name}/{block.base_folder or ''}"
