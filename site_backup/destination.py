"""Where backups go: container and prefix, credentials, and a ready client."""

from __future__ import annotations

import base64
import functools
import os
import re
import threading
import weakref
from urllib.parse import urlsplit
from dataclasses import dataclass, replace
from typing import Annotated, Any, Callable

from pydantic import Field

from .errors import ConfigurationError, describe, redact
from .retry import RetryPolicy, StorageBudget, StorageUnavailable, TokenUnavailable, sdk_retry_policy
from .storage import AzureBlobStore, RetryLog

# Azurite's well-known development account: public, documented, and only valid on an emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Where `make azurite` starts it (AZURITE_PORT moves it).
AZURITE_URL = f"http://127.0.0.1:{os.environ.get('AZURITE_PORT') or 10000}/devstoreaccount1"

_CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
# The same rule without look-ahead, for JSON Schema and pydantic (whose regex engine has
# none): the Prefect UI's form checks a container name with it before a run is created.
CONTAINER_PATTERN = r"^[a-z0-9](?:-?[a-z0-9])*$"
ContainerName = Annotated[str, Field(pattern=CONTAINER_PATTERN, min_length=3, max_length=63)]


def azurite_connection_string(blob_url: str | None = None) -> str:
    """The connection string of Azurite's development account at `blob_url`."""
    blob_url = blob_url or AZURITE_URL
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={blob_url};"
    )


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


@dataclass(frozen=True)
class StorageSettings:
    """How many connections to keep per account. Retries and timeouts are the run's
    (site_backup/retry.py), the same for the direct requests and the SDK."""

    pool_size: int = 64


def _credentials(credentials_block: str | None):
    """Return (connection string or None, account URL or None, credential or None, source)."""
    if credentials_block:
        return _from_block(credentials_block)
    if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        return os.environ["AZURE_STORAGE_CONNECTION_STRING"], None, None, "AZURE_STORAGE_CONNECTION_STRING"
    if os.environ.get("AZURE_STORAGE_ACCOUNT_URL"):
        from azure.identity import DefaultAzureCredential

        url = os.environ["AZURE_STORAGE_ACCOUNT_URL"]
        return None, url, DefaultAzureCredential(), "AZURE_STORAGE_ACCOUNT_URL with DefaultAzureCredential"
    return azurite_connection_string(), None, None, "the local Azurite default"


def _from_block(name: str):
    # Imported here: prefect_azure takes seconds to import and most runs never need it.
    from prefect_azure.credentials import AzureBlobStorageCredentials

    try:
        block = AzureBlobStorageCredentials.load(name)
    except ValueError as exc:
        raise ConfigurationError(
            f"no Azure Blob Storage Credentials block named {name!r}: create it in the Prefect UI "
            f"(Blocks) or with `make deploy`, or leave out --credentials-block"
        ) from exc
    return _from_credentials(block, f"credentials block {name!r}")


def _from_credentials(block, source: str):
    """Connection details from a prefect-azure AzureBlobStorageCredentials block."""
    if block.connection_string is not None:
        return block.connection_string.get_secret_value(), None, None, source
    if block.client_id and block.tenant_id and block.client_secret:
        from azure.identity import ClientSecretCredential

        credential = ClientSecretCredential(block.tenant_id, block.client_id, block.client_secret.get_secret_value())
        return None, block.account_url, credential, source
    from azure.identity import DefaultAzureCredential

    return None, block.account_url, DefaultAzureCredential(), source


_session_lock = threading.Lock()
_PROXY_VARIABLES = [v for name in ("http_proxy", "https_proxy", "all_proxy") for v in (name, name.upper())]


# The Blob service version the direct requests ask for: one Azure and Azurite 3.35+
# both accept (the SDK asks for its newest, which Azurite accepts only with --skipApiVersionCheck).
SIGNED_API_VERSION = "2025-11-05"


class StorageAccount:
    """A storage account as configured: its blob endpoint, where the settings came from, the
    direct requests (`signed`, any sign-in mode, None behind a proxy), and the SDK client,
    built on first use (a backup never needs it, and importing the SDK is a fixed cost)."""

    def __init__(self, url: str, source: str, signed, build: Callable[[Any], Any]):
        self.url, self.source, self.signed = url, source, signed
        self._build, self._lock = build, threading.Lock()
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def client_for(self, budget: StorageBudget):
        """The SDK's BlobServiceClient whose retries `budget` decides (one per run; they
        share their connections)."""
        with self._lock:
            if budget not in self._clients:
                self._clients[budget] = self._build(budget)
            return self._clients[budget]


@functools.lru_cache(maxsize=8)
def _account(credentials_block, env_key, settings: StorageSettings) -> StorageAccount:
    conn_str, account_url, credential, source = _credentials(credentials_block)
    try:
        return _connect(conn_str, account_url, credential, source, settings)
    except ValueError as exc:  # the SDK's and ours: a malformed setting, never a network problem
        raise ConfigurationError(
            f"the storage settings from {source} are not valid ({redact(str(exc))}): "
            f"check the connection string or account URL"
        ) from None


def _connect(conn_str, account_url, credential, source: str, settings: StorageSettings) -> StorageAccount:
    if account_url:
        check_endpoint(account_url)
    proxied = any(os.environ.get(v) for v in _PROXY_VARIABLES)
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None

    session = []  # one requests session for every client of this account, made on first use

    def build(budget: StorageBudget):
        import requests
        from azure.core.pipeline.transport import RequestsTransport

        with _session_lock:
            if not session:
                made = requests.Session()
                if not proxied:
                    # requests reads every environment variable on every request to look for proxies:
                    # about 0.5 ms of CPU per blob here. Without proxy settings, read them once instead.
                    made.trust_env = False
                    made.verify = ca_bundle or True
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=settings.pool_size)
                made.mount("http://", adapter)
                made.mount("https://", adapter)
                session.append(made)
        from .fastblob import DeadlineCredential

        # Token fetches, too, end by the run's deadline.
        bounded = DeadlineCredential(credential, budget) if hasattr(credential, "get_token") else credential
        return _blob_service(
            conn_str, account_url, bounded,
            # The transport passes its own verify setting with every request, over the session's.
            transport=RequestsTransport(session=session[0], session_owner=False, connection_verify=ca_bundle or True),
            retry_policy=sdk_retry_policy(budget),
            connection_timeout=budget.connect_timeout(),
            read_timeout=budget.policy.storage_timeout,
        )

    # Behind a proxy the SDK sends everything (it reads the proxy settings).
    direct = None if proxied else direct_access(conn_str, account_url, credential)
    if direct is None:
        url = build(StorageBudget()).primary_endpoint.split("?")[0].rstrip("/")
        return StorageAccount(url, source, None, build)
    from .fastblob import DirectBlobs

    url, auth = direct
    return StorageAccount(url, source, DirectBlobs(url, auth, SIGNED_API_VERSION, settings, ca_bundle=ca_bundle),
                          build)


def direct_access(conn_str: str | None, account_url: str | None, credential):
    """(blob endpoint, authorization) for the direct requests, from the same settings the
    SDK is given: an account key, a SAS (in a connection string or the account URL) or a
    token credential (Entra ID). None for settings only the SDK understands."""
    from .fastblob import Bearer, Sas, SharedKey

    if conn_str:
        keyed = shared_key_account(conn_str)
        if keyed:
            url, name, key = keyed
            return url, SharedKey(name, key)
        sas = sas_account(conn_str)
        return (sas[0], Sas(sas[1])) if sas else None
    if not account_url:
        return None
    url, _, query = account_url.partition("?")
    if "sig=" in query:
        return check_endpoint(url.rstrip("/")), Sas(query)
    if credential is not None and hasattr(credential, "get_token"):
        if urlsplit(url).scheme != "https":
            raise ValueError(f"account URL {url!r} is not https://, and Entra ID tokens are only sent over https")
        return check_endpoint(url.rstrip("/")), Bearer(credential)
    return None


def _fields(conn_str: str) -> dict[str, str]:
    fields = {}
    for part in conn_str.split(";"):  # as the SDK reads it: names in any case, nothing trimmed
        name, sep, value = part.partition("=")
        if sep:
            fields[name.lower()] = value
    return fields


def sas_account(conn_str: str) -> tuple[str, str] | None:
    """(blob endpoint, SAS token) from a connection string with a SharedAccessSignature."""
    fields = _fields(conn_str)
    token = fields.get("sharedaccesssignature")
    if not token or "usedevelopmentstorage" in fields:
        return None
    url = fields.get("blobendpoint") or (
        f"{fields.get('defaultendpointsprotocol', 'https')}://{fields.get('accountname')}.blob."
        f"{fields.get('endpointsuffix', 'core.windows.net')}" if fields.get("accountname") else None)
    return (check_endpoint(url.rstrip("/")), token) if url else None


def shared_key_account(conn_str: str | None) -> tuple[str, str, str] | None:
    """(blob endpoint, account name, account key) from a connection string that has an
    account key (and no SAS token), else None. The endpoint is the one the SDK would use."""
    if not conn_str:
        return None
    fields = _fields(conn_str)
    account, key = fields.get("accountname"), fields.get("accountkey")
    if not account or not key or "sharedaccesssignature" in fields or "usedevelopmentstorage" in fields:
        return None
    try:
        base64.b64decode(key, validate=True)
    except ValueError:
        raise ValueError("the account key is not valid base64: copy it again from the storage account's "
                         "Access keys") from None
    url = fields.get("blobendpoint") or (
        f"{fields.get('defaultendpointsprotocol', 'https')}://{account}.blob."
        f"{fields.get('endpointsuffix', 'core.windows.net')}"
    )
    return check_endpoint(url.rstrip("/")), account, key


def check_endpoint(url: str) -> str:
    """`url` if it is a usable blob endpoint, else ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"blob endpoint {url!r} is not an http:// or https:// address")
    try:
        parts.port
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
        raise ValueError(f"the port {port!r} of blob endpoint {url!r} is not a number") from None
    return url


def _blob_service(conn_str, account_url, credential, **options):
    from azure.storage.blob import BlobServiceClient

    if conn_str:
        return BlobServiceClient.from_connection_string(conn_str, **options)
    return BlobServiceClient(account_url, credential=credential, **options)


def _env_key() -> tuple:
    """What the client cache depends on besides the block name: the storage settings."""
    return os.environ.get("AZURE_STORAGE_CONNECTION_STRING"), os.environ.get("AZURE_STORAGE_ACCOUNT_URL"), AZURITE_URL


def storage_account(destination: Destination, settings: StorageSettings = StorageSettings()) -> StorageAccount:
    """The destination's storage account (one per process and settings, shared by threads)."""
    return _account(destination.credentials_block, _env_key(), settings)


def open_store(destination: Destination, budget: StorageBudget | None = None) -> AzureBlobStore:
    """A BlobStore for the destination's container, with its own retry count; `budget`
    (the run's) decides its retries, else a fresh one with the default policy."""
    account = storage_account(destination)
    budget = budget if budget is not None else StorageBudget(RetryPolicy(), account.url)
    return AzureBlobStore(destination.container,
                          lambda: account.client_for(budget).get_container_client(destination.container),
                          retries=RetryLog(budget), signed=account.signed)


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
    prefix = destination.prefix + "/" if destination.prefix else None
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
    configuration problem. (azure.core is imported here, on failure only: 20 ms.)"""
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

    conn_str, account_url, credential, source = _from_credentials(block.credentials, f"checkpoint block {block_name!r}")
    budget = StorageBudget(RetryPolicy(retries=1, storage_timeout=min(policy.storage_timeout, 30)))
    client = _blob_service(conn_str, account_url, DeadlineCredential(credential, budget) if credential else None,
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
