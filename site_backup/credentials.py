"""Where the storage settings come from: a credentials block, the environment, or the local
Azurite; and what a connection string or account URL says."""

from __future__ import annotations

import base64
import os
from urllib.parse import urlsplit

from .errors import ConfigurationError

# Azurite's well-known development account: public, documented, and only valid on an emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Where `make azurite` starts it (AZURITE_PORT moves it).
AZURITE_URL = f"http://127.0.0.1:{os.environ.get('AZURITE_PORT') or 10000}/devstoreaccount1"


def azurite_connection_string(blob_url: str | None = None) -> str:
    """The connection string of Azurite's development account at `blob_url`."""
    blob_url = blob_url or AZURITE_URL
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={blob_url};"
    )


def find_credentials(credentials_block: str | None):
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
    return block_credentials(block, f"credentials block {name!r}")


def block_credentials(block, source: str):
    """Connection details from a prefect-azure AzureBlobStorageCredentials block."""
    if block.connection_string is not None:
        return block.connection_string.get_secret_value(), None, None, source
    if block.client_id and block.tenant_id and block.client_secret:
        from azure.identity import ClientSecretCredential

        credential = ClientSecretCredential(block.tenant_id, block.client_id, block.client_secret.get_secret_value())
        return None, block.account_url, credential, source
    from azure.identity import DefaultAzureCredential

    return None, block.account_url, DefaultAzureCredential(), source


def environment_key() -> tuple:
    """What the client cache depends on besides the block name: the storage settings."""
    return os.environ.get("AZURE_STORAGE_CONNECTION_STRING"), os.environ.get("AZURE_STORAGE_ACCOUNT_URL"), AZURITE_URL


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
