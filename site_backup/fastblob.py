"""The requests a backup makes, signed directly with the account key (Shared Key): Create
Container, one page of List Blobs, Put Blob, Get Blob Properties, Put Block, Put Block List.

Why: azure-storage-blob spends about 2 ms of CPU per request in its pipeline, and importing
it takes 0.17 s; for small files that is most of the cost of a backup on a small machine.
These requests, signed here and sent with http.client on kept-alive connections, cost about
0.25 ms (urllib3: 0.43 ms; on 2 cores shared with the storage emulator that CPU is the
bottleneck). Everything else (full listings, downloads, token credentials, proxies) stays
with the SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import random
import select
import ssl
import time
from email.utils import formatdate
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

from .errors import TRANSIENT_STATUSES

# Headers that take part in a Shared Key signature, in signing order.
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
           "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


class SharedKeyBlobs:
    """The signed requests of a backup, on one storage account."""

    def __init__(self, endpoint: str, account_name: str, account_key: str, api_version: str, settings,
                 ca_bundle: str | None = None):
        parts = urlsplit(endpoint.rstrip("/"))
        self.base_path = parts.path  # "/devstoreaccount1" on Azurite, "" on Azure
        self.account = account_name
        self.key = base64.b64decode(account_key)
        self.version = api_version
        self.settings = settings
        self.connections = Connections(parts.scheme, parts.hostname, parts.port, settings, ca_bundle)

    def create_container(self, container: str, on_retry) -> bool:
        """Create Container; False when it already exists."""
        query = {"restype": "container"}
        return self._send("PUT", container, "", {}, b"", on_retry, query=query, exists_ok=True) is not None

    def container_etag(self, container: str, on_retry) -> str:
        """Get Container Properties: the container's ETag (a re-created container has a new one)."""
        response = self._send("HEAD", container, "", {}, b"", on_retry, query={"restype": "container"})
        return response.headers.get("ETag", "")

    def first_blob(self, container: str, prefix: str | None, on_retry) -> str | None:
        """The name of one blob whose name starts with `prefix`, or None when there is none."""
        query = {"restype": "container", "comp": "list", "maxresults": "1", **({"prefix": prefix} if prefix else {})}
        response = self._send("GET", container, "", {}, b"", on_retry, query=query)
        name = ElementTree.fromstring(response.data).find("./Blobs/Blob/Name")
        return None if name is None else (name.text or "")

    def put(self, container: str, name: str, data: bytes, md5: bytes, content_type: str, metadata: dict[str, str],
            on_retry) -> None:
        """Put Blob: the service checks Content-MD5 on receipt and stores it as the blob's MD5."""
        headers = {"x-ms-blob-type": "BlockBlob", "Content-MD5": base64.b64encode(md5).decode(),
                   "x-ms-blob-content-type": content_type}
        headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        self._send("PUT", container, name, headers, data, on_retry)

    def stage_block(self, container: str, name: str, block_id: str, data: bytes, on_retry) -> None:
        """Put Block, with the block's MD5 for the service to check on receipt."""
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()}
        self._send("PUT", container, name, headers, data, on_retry, query={"comp": "block", "blockid": block_id})

    def commit_blocks(self, container: str, name: str, block_ids: list[str], md5: bytes, content_type: str,
                      metadata: dict[str, str], on_retry) -> None:
        """Put Block List: the blob appears with these blocks, and `md5` as its stored MD5."""
        body = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                + "".join(f"<Latest>{b}</Latest>" for b in block_ids) + "</BlockList>").encode()
        headers = {"Content-Type": "application/xml; charset=utf-8",
                   "x-ms-blob-content-md5": base64.b64encode(md5).decode(), "x-ms-blob-content-type": content_type}
        headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        self._send("PUT", container, name, headers, body, on_retry, query={"comp": "blocklist"})

    def head(self, container: str, name: str, on_retry):
        """Get Blob Properties: (size, Content-MD5 or None, metadata) or None when absent."""
        response = self._send("HEAD", container, name, {}, b"", on_retry, missing_ok=True)
        if response is None:
            return None
        md5 = response.headers.get("Content-MD5")
        metadata = {k[len("x-ms-meta-"):].lower(): v for k, v in response.headers.items()
                    if k.lower().startswith("x-ms-meta-")}
        return int(response.headers["Content-Length"]), base64.b64decode(md5) if md5 else None, metadata

    def _send(self, method, container, name, headers, body, on_retry, missing_ok=False, query=None,
              exists_ok=False):
        """The response to a signed request, retried on transient errors; None for a missing
        blob when `missing_ok`, and for an existing container when `exists_ok`."""
        path = f"{self.base_path}/{container}" + (f"/{quote(name, safe='~/')}" if name else "")
        query = query or {}
        target = path + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items()) if query else "")
        for attempt in range(self.settings.retry_total + 1):
            signed = self._sign(method, path, dict(headers, **{"Content-Length": str(len(body))}), query)
            try:
                response = self.connections.request(method, target, body, signed)
            except (OSError, http.client.HTTPException) as exc:
                # Imported on failure only: azure.core costs 20 ms, before the first upload.
                from azure.core.exceptions import ServiceRequestError, ServiceResponseError

                kind = ServiceRequestError if isinstance(exc, _NotConnected) else ServiceResponseError
                if attempt == self.settings.retry_total:
                    raise kind(describe_socket_error(exc)) from None
                on_retry.add(kind.__name__)
            else:
                if 200 <= response.status < 300:
                    return response
                code = response.headers.get("x-ms-error-code") or response.reason or ""
                if response.status == 404 and missing_ok and code != "ContainerNotFound":
                    return None
                if response.status == 409 and exists_ok and code == "ContainerAlreadyExists":
                    return None
                if response.status not in TRANSIENT_STATUSES or attempt == self.settings.retry_total:
                    raise _error(response.status, code, response.data)
                on_retry.add(f"{response.status} {code}")
            time.sleep(self.settings.initial_backoff * self.settings.increment_base ** attempt * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")

    def _sign(self, method: str, path: str, headers: dict[str, str], query: dict[str, str] | None = None
              ) -> dict[str, str]:
        headers = dict(headers, **{"x-ms-date": formatdate(usegmt=True), "x-ms-version": self.version})
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("content-length") == "0":
            lower["content-length"] = ""
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
        to_sign = "\n".join([method, *(lower.get(h, "") for h in _SIGNED)]) + "\n" + canonical_headers
        to_sign += f"/{self.account}{path}" + "".join(f"\n{k}:{v}" for k, v in sorted((query or {}).items()))
        signature = base64.b64encode(hmac.new(self.key, to_sign.encode("utf-8"), hashlib.sha256).digest()).decode()
        headers["Authorization"] = f"SharedKey {self.account}:{signature}"
        return headers


class Response:
    """Status, reason, headers (case-insensitive) and body of one finished request."""

    def __init__(self, status: int, reason: str, headers, data: bytes):
        self.status, self.reason, self.headers, self.data = status, reason, headers, data


class _NotConnected(OSError):
    """The connection could not be made (nothing was sent)."""


class Connections:
    """Kept-alive connections to one host, shared by threads: a connection is taken for
    one request and given back after it, newest first, so a few busy ones stay warm."""

    def __init__(self, scheme: str, host: str, port: int | None, settings, ca_bundle: str | None = None):
        self.host, self.settings = host, settings
        if scheme == "https":
            context = ssl.create_default_context(cafile=ca_bundle or None)
            self.make = lambda: http.client.HTTPSConnection(host, port, timeout=settings.connection_timeout,
                                                            context=context)
        else:
            self.make = lambda: http.client.HTTPConnection(host, port, timeout=settings.connection_timeout)
        self.idle: list[http.client.HTTPConnection] = []  # append and pop are atomic

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        conn = self._idle_connection() or self._connect()
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close or len(self.idle) >= self.settings.pool_size:
            conn.close()
        else:
            self.idle.append(conn)
        return Response(response.status, response.reason, response.headers, data)

    def _idle_connection(self) -> http.client.HTTPConnection | None:
        while True:
            try:
                conn = self.idle.pop()
            except IndexError:
                return None
            # An idle connection with something to read was closed by the server (its
            # keep-alive timeout): using it would fail and cost a retry.
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        conn = self.make()
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise _NotConnected(exc.errno, describe_socket_error(exc)) from exc
        conn.sock.settimeout(self.settings.read_timeout)  # the connect timeout was for connecting
        return conn


def describe_socket_error(exc: BaseException) -> str:
    """A short reason for a failed connection or request."""
    if isinstance(exc, _NotConnected):
        return f"cannot connect: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error(status: int, code: str, body: bytes):
    """The SDK's exception types, so callers classify and describe errors the same way."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
    )

    kind = {403: ClientAuthenticationError, 404: ResourceNotFoundError, 409: ResourceExistsError}.get(
        status, HttpResponseError)
    exc = kind(message=f"{status} {code}: {body[:300].decode('utf-8', 'replace')}")
    exc.status_code, exc.error_code, exc.reason = status, code or None, code
    return exc
