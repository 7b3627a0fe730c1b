"""A storage account's clients: the direct requests and the SDK's, one set per account and
settings, shared by the threads of a process."""

from __future__ import annotations

import functools
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from .credentials import check_endpoint, environment_key, find_credentials, sas_account, shared_key_account
from .errors import ConfigurationError, redact
from .retry import RetryPolicy, StorageBudget
from .sdk_retry import sdk_retry_policy
from .azure_store import AzureBlobStore
from .storage import RetryLog


class DestinationLike(Protocol):
    """What the clients read of a destination.Destination (a module above this one)."""

    @property
    def container(self) -> str: ...

    @property
    def credentials_block(self) -> str | None: ...


@dataclass(frozen=True)
class StorageSettings:
    """How many connections to keep per account. Retries and timeouts are the run's
    (site_backup/retry.py), the same for the direct requests and the SDK."""

    pool_size: int = 64


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
    conn_str, account_url, credential, source = find_credentials(credentials_block)
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
                    # requests looks through the environment for proxy settings on every request, CPU
                    # spent again for every blob. Without proxy settings, read them once instead.
                    made.trust_env = False
                    made.verify = ca_bundle or True
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=settings.pool_size)
                made.mount("http://", adapter)
                made.mount("https://", adapter)
                session.append(made)
        from .fastblob import DeadlineCredential

        # Token fetches, too, end by the run's deadline.
        bounded = DeadlineCredential(credential, budget) if hasattr(credential, "get_token") else credential
        return blob_service_client(
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


def blob_service_client(conn_str, account_url, credential, **options):
    """The SDK's BlobServiceClient for these settings (`options` go to its constructor)."""
    from azure.storage.blob import BlobServiceClient

    if conn_str:
        return BlobServiceClient.from_connection_string(conn_str, **options)
    return BlobServiceClient(account_url, credential=credential, **options)


def storage_account(destination: DestinationLike, settings: StorageSettings = StorageSettings()) -> StorageAccount:
    """The destination's storage account (one per process and settings, shared by threads)."""
    return _account(destination.credentials_block, environment_key(), settings)


def open_store(destination: DestinationLike, budget: StorageBudget | None = None, access_tier: str | None = None
               ) -> AzureBlobStore:
    """A BlobStore for the destination's container, with its own retry count; `budget`
    (the run's) decides its retries, else a fresh one with the default policy. Its
    uploads are written in `access_tier` (None: the account's default)."""
    account = storage_account(destination)
    budget = budget if budget is not None else StorageBudget(RetryPolicy(), account.url)
    return AzureBlobStore(destination.container,
                          lambda: account.client_for(budget).get_container_client(destination.container),
                          retries=RetryLog(budget), signed=account.signed, access_tier=access_tier)
