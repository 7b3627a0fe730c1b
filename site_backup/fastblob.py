"""The requests a backup makes, sent directly over http.client (over 400 lines: one REST
client, its signing, connections and errors read together): Create Container, Get
Container Properties, List Blobs, Put Blob, Get Blob Properties, Put Block, Put Block List,
Snapshot Blob; and mirror mode's Copy Blob and Delete Blob, conditional on the ETag listed.
Every sign-in mode takes this path: Shared Key (signed here), a SAS (its query appended) and
Entra ID (a bearer token from an azure-identity credential, refreshed before it expires).

Why: azure-storage-blob spends several times more CPU per request in its pipeline than
this, and importing it is a fixed cost of every run; for small files that is most of the
cost of a backup on a small machine. Downloads, proxies and anything else stay with the SDK.
The signing and the header order are checked against the SDK's own in the tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import platform
import random
import select
import socket
import ssl
import threading
import time
import uuid
import weakref
from email.utils import formatdate
from typing import Iterator, NamedTuple
from urllib.parse import quote, unquote, urlsplit
from xml.etree import ElementTree

from . import __version__
from .errors import TRANSIENT_STATUSES
from .retry import StorageBudget, fetch_token, on_stop, retry_after_seconds
from .units import MiB

# Headers that take part in a Shared Key signature, in signing order.
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
           "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")

USER_AGENT = f"site-backup/{__version__} Python/{platform.python_version()} ({platform.system()})"
STORAGE_SCOPE = "https://storage.azure.com/.default"


class SharedKey:
    """Shared Key: every request signed with the account key."""

    def __init__(self, account_name: str, account_key: str):
        self.account, self.key = account_name, base64.b64decode(account_key)

    def authorize(self, method: str, path: str, headers: dict[str, str], query: dict[str, str], budget=None) -> str:
        headers["Authorization"] = f"SharedKey {self.account}:{self.signature(method, path, headers, query)}"
        return ""

    def signature(self, method: str, path: str, headers: dict[str, str], query: dict[str, str]) -> str:
        return base64.b64encode(hmac.new(self.key, string_to_sign(self.account, method, path, headers, query)
                                         .encode("utf-8"), hashlib.sha256).digest()).decode()


class Sas:
    """A shared access signature: its query goes on every request, nothing is signed here."""

    def __init__(self, token: str):
        self.query = token.lstrip("?")

    def authorize(self, method, path, headers, query, budget=None) -> str:
        return self.query


class Bearer:
    """Entra ID: a bearer token from an azure-identity credential, fetched again five minutes
    before it expires (one fetch at a time; the threads share it), never waited for past
    the run's storage timeout."""

    def __init__(self, credential, scope: str = STORAGE_SCOPE):
        self.credential, self.scope = credential, scope
        self._lock, self._token, self._expires = threading.Lock(), "", 0.0

    def authorize(self, method, path, headers, query, budget=None) -> str:
        headers["Authorization"] = f"Bearer {self.token(budget)}"
        return ""

    def token(self, budget: StorageBudget | None = None) -> str:
        budget = budget if budget is not None else StorageBudget()
        with self._lock:
            budget.check()  # a fetch that timed out while this thread waited ended the run
            if time.time() > self._expires - 300:
                access = fetch_token(self.credential, (self.scope,), budget)
                self._token, self._expires = access.token, float(access.expires_on)
            return self._token


class DeadlineCredential:
    """The token credential as the SDK's clients get it: each fetch ends within the run's
    storage timeout, as the direct requests' do (the budget is held weakly: the clients
    are cached by it)."""

    def __init__(self, credential, budget: StorageBudget):
        self.credential, self._budget = credential, weakref.ref(budget)

    def get_token(self, *scopes, **kwargs):
        return fetch_token(self.credential, scopes, self._budget() or StorageBudget(), **kwargs)


def string_to_sign(account: str, method: str, path: str, headers: dict[str, str], query: dict[str, str]) -> str:
    """The Shared Key string to sign (Blob service, version 2015-02-21 and later)."""
    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get("content-length") == "0":
        lower["content-length"] = ""
    x_ms = service_order([k for k in lower if k.startswith("x-ms-")])
    canonical_headers = "".join(f"{k}:{lower[k]}\n" for k in x_ms)
    resource = f"/{account}{path}" + "".join(f"\n{k.lower()}:{v}" for k, v in sorted(query.items()))
    return "\n".join([method, *(lower.get(h, "") for h in _SIGNED)]) + "\n" + canonical_headers + resource


# The order in which the service sorts x-ms- headers before checking a signature: not code
# point order. Letters compare without case, after digits, after '_'; '-' is ignored at
# first and only breaks ties, where more ignored characters before a difference sort first.
_PRIMARY = {**{c: 0x748 for c in "_"}, **{c: 0xD03 + i for i, c in enumerate("0123456789")},
            **{c: 0xE02 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")},
            **{c: 0xE02 + i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}}


def _collation_key(name: str) -> tuple:
    primary = tuple(_PRIMARY.get(c, 0) for c in name if _PRIMARY.get(c, 0))
    # Ties: compare where the ignored hyphens stand, as the service does.
    hyphens = tuple(-i for i, c in enumerate(name) if c == "-")
    return primary, hyphens


def service_order(names: list[str]) -> list[str]:
    """Header names in the order the service uses for the signature."""
    return sorted(names, key=_collation_key)


class Listed(NamedTuple):
    """One blob of a listing: what a backup compares a file with."""

    name: str
    size: int
    content_md5: bytes | None
    metadata: dict[str, str]
    version_id: str | None = None  # on accounts with blob versioning on: the current version
    tier: str | None = None  # AccessTier: Hot, Cool, Cold or Archive (a lifecycle rule's doing)
    lease_state: str = "available"  # leased, expired, breaking, broken or available, as Azure names them


class DirectBlobs:
    """The direct requests of a backup, on one storage account."""

    def __init__(self, endpoint: str, auth, api_version: str, settings, ca_bundle: str | None = None):
        parts = urlsplit(endpoint.rstrip("/"))
        self.base_path = parts.path  # "/devstoreaccount1" on Azurite, "" on Azure
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.auth = auth
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
        return next((b.name for b in self.list_blobs(container, prefix, on_retry, page_size=1)), None)

    def list_blobs(self, container: str, prefix: str | None, on_retry, delimiter: str | None = None,
                   page_size: int = 5000) -> Iterator[Listed]:
        """List Blobs with metadata, every page (a page may be short, even empty, and still
        have a next one). With a delimiter, only the blobs directly under the prefix."""
        query = {"restype": "container", "comp": "list", "include": "metadata", "maxresults": str(page_size),
                 **({"prefix": prefix} if prefix else {}), **({"delimiter": delimiter} if delimiter else {})}
        while True:
            page = ElementTree.fromstring(self._send("GET", container, "", {}, b"", on_retry, query=query).data)
            for blob in page.iterfind("./Blobs/Blob"):
                yield _listed(blob)
            marker = page.findtext("NextMarker")
            if not marker:
                return
            query["marker"] = marker

    def put(self, container: str, name: str, data: bytes, md5: bytes, content_type: str, metadata: dict[str, str],
            on_retry, tier: str | None = None) -> str | None:
        """Put Blob: the service checks Content-MD5 on receipt and stores it as the blob's MD5;
        written in `tier` (Hot, Cool, Cold), else the account's default. Returns the new
        version's id on an account with blob versioning on, else None."""
        headers = {"x-ms-blob-type": "BlockBlob", "Content-MD5": base64.b64encode(md5).decode(),
                   "x-ms-blob-content-type": content_type, **({"x-ms-access-tier": tier} if tier else {})}
        headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        return self._send("PUT", container, name, headers, data, on_retry).headers.get("x-ms-version-id")

    def stage_block(self, container: str, name: str, block_id: str, data: bytes, on_retry) -> None:
        """Put Block, with the block's MD5 for the service to check on receipt."""
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()}
        self._send("PUT", container, name, headers, data, on_retry, query={"comp": "block", "blockid": block_id})

    def commit_blocks(self, container: str, name: str, block_ids: list[str], md5: bytes, content_type: str,
                      metadata: dict[str, str], on_retry, tier: str | None = None) -> str | None:
        """Put Block List: the blob appears with these blocks, and `md5` as its stored MD5, in
        `tier` (else the account's default). Returns the new version's id on an account
        with blob versioning on, else None."""
        body = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                + "".join(f"<Latest>{b}</Latest>" for b in block_ids) + "</BlockList>").encode()
        headers = {"Content-Type": "application/xml; charset=utf-8",
                   "x-ms-blob-content-md5": base64.b64encode(md5).decode(), "x-ms-blob-content-type": content_type,
                   **({"x-ms-access-tier": tier} if tier else {})}
        headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        return self._send("PUT", container, name, headers, body, on_retry,
                          query={"comp": "blocklist"}).headers.get("x-ms-version-id")

    def commit_new(self, container: str, name: str, block_ids: list[str], md5: bytes | None, content_type: str,
                   metadata: dict[str, str], on_retry) -> None:
        """Put Block List with If-None-Match: *: creates the blob, never replaces one (409
        BlobAlreadyExists), so what is written once stays as written."""
        body = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                + "".join(f"<Latest>{b}</Latest>" for b in block_ids) + "</BlockList>").encode()
        headers = {"Content-Type": "application/xml; charset=utf-8", "If-None-Match": "*",
                   **({"x-ms-blob-content-md5": base64.b64encode(md5).decode()} if md5 else {}),
                   "x-ms-blob-content-type": content_type}
        headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        self._send("PUT", container, name, headers, body, on_retry, query={"comp": "blocklist"})

    def lease(self, container: str, name: str, action: str, lease_id: str, on_retry, duration: int = 60) -> None:
        """Lease Blob: `acquire` (as `lease_id`, for `duration` seconds), `renew` or `release`."""
        headers = {"x-ms-lease-action": action}
        if action == "acquire":
            headers.update({"x-ms-proposed-lease-id": lease_id, "x-ms-lease-duration": str(duration)})
        else:
            headers["x-ms-lease-id"] = lease_id
        self._send("PUT", container, name, headers, b"", on_retry, query={"comp": "lease"})

    def delete(self, container: str, name: str, on_retry, lease_id: str | None = None, *,
               if_match: str | None = None, snapshots: bool = False) -> None:
        """Delete Blob (with its lease's id when it is leased; with its snapshots when
        `snapshots`; with `if_match`, only while its ETag is that one, else 412 ConditionNotMet);
        a missing blob is no error."""
        headers = {"x-ms-lease-id": lease_id} if lease_id else {}
        if if_match:
            headers["If-Match"] = if_match
        if snapshots:
            headers["x-ms-delete-snapshots"] = "include"
        self._send("DELETE", container, name, headers, b"", on_retry, missing_ok=True)

    def url(self, container: str, name: str, snapshot: str | None = None) -> str:
        """The blob's (or a snapshot's) URL as a Copy Blob source in this account, with the
        SAS when the credentials are one (as the SDK's BlobClient.url)."""
        query = "&".join(q for q in (f"snapshot={snapshot}" if snapshot else "",
                                     self.auth.query if isinstance(self.auth, Sas) else "") if q)
        return f"{self.origin}{self.base_path}/{container}/{quote(name, safe='~/')}" + (f"?{query}" if query else "")

    def copy(self, container: str, name: str, source_url: str, on_retry, source_if_match: str | None = None) -> str:
        """Copy Blob from `source_url` (this account) to `name`, with `source_if_match` only
        while the source's ETag is that one (else 412); the copy's status ("success", or
        "pending" while the service still copies)."""
        headers = {"x-ms-copy-source": source_url}
        if source_if_match:
            headers["x-ms-source-if-match"] = source_if_match
        response = self._send("PUT", container, name, headers, b"", on_retry)
        return response.headers.get("x-ms-copy-status") or "success"

    def copy_status(self, container: str, name: str, on_retry) -> str:
        """Get Blob Properties: the status of the last copy into the blob."""
        response = self._send("HEAD", container, name, {}, b"", on_retry)
        return response.headers.get("x-ms-copy-status") or "success"

    def snapshot(self, container: str, name: str, on_retry) -> str:
        """Snapshot Blob: a read-only copy of the blob as it is now (content, properties
        and metadata, Content-MD5 included); returns its time, the snapshot's id."""
        response = self._send("PUT", container, name, {}, b"", on_retry, query={"comp": "snapshot"})
        return response.headers["x-ms-snapshot"]

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
        encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        request_id = str(uuid.uuid4())  # the same on every attempt, as the SDK does: support can trace it
        budget = on_retry.budget  # the run's: it decides every retry (site_backup/retry.py)
        retry = 0
        while True:
            budget.check()
            signed = dict(headers, **{"Content-Length": str(len(body)), "x-ms-date": formatdate(usegmt=True),
                                      "x-ms-version": self.version, "x-ms-client-request-id": request_id,
                                      "User-Agent": USER_AGENT})
            extra = self.auth.authorize(method, path, signed, query, budget)
            target = path + ("?" + "&".join(q for q in (encoded, extra) if q) if encoded or extra else "")
            budget.begin()
            try:
                response, failure = self.connections.request(method, target, body, signed, budget), None
            except (OSError, http.client.HTTPException) as exc:
                response, failure = None, exc
            finally:
                budget.end()
            if failure is not None:
                # Imported on failure only: importing azure.core up front would delay every first upload.
                from azure.core.exceptions import ServiceRequestError, ServiceResponseError

                kind = ServiceRequestError if isinstance(failure, _NotConnected) else ServiceResponseError
                # No answer: not this request's failure while the run's budget lasts.
                if not budget.retry(retry, describe_socket_error(failure), answered=False):
                    raise kind(describe_socket_error(failure)) from None
                on_retry.add(kind.__name__)
            else:
                code = response.headers.get("x-ms-error-code") or response.reason or ""
                if response.status not in TRANSIENT_STATUSES:
                    budget.answered()
                if 200 <= response.status < 300:
                    return response
                if response.status == 404 and missing_ok and code != "ContainerNotFound":
                    return None
                if response.status == 409 and exists_ok and code == "ContainerAlreadyExists":
                    return None
                if response.status not in TRANSIENT_STATUSES or not budget.retry(
                        retry, f"{response.status} {code}", answered=True,
                        retry_after=retry_after_seconds(response.headers)):
                    raise _error(response.status, code, response.data)
                on_retry.add(f"{response.status} {code}")
            retry += 1


class Response:
    """Status, reason, headers (case-insensitive) and body of one finished request."""

    def __init__(self, status: int, reason: str, headers, data: bytes):
        self.status, self.reason, self.headers, self.data = status, reason, headers, data


_PIECE = MiB  # a body above this goes out in pieces of it


def _pieces(conn, body: bytes, budget):
    """`body` in pieces; after each one is sent, storage counts as heard from (it reads)
    and the next piece gets a fresh timeout."""
    view = memoryview(body)
    for start in range(0, len(view), _PIECE):
        yield view[start : start + _PIECE]
        budget.heard_from()
        conn.sock.settimeout(budget.timeout())


class _NotConnected(OSError):
    """The connection could not be made (nothing was sent)."""


class Connections:
    """Kept-alive connections to one host, shared by threads: a connection is taken for
    one request and given back after it, newest first, so a few busy ones stay warm."""

    def __init__(self, scheme: str, host: str, port: int | None, settings, ca_bundle: str | None = None):
        self.host, self.settings = host, settings
        if scheme == "https":
            context = ssl.create_default_context(cafile=ca_bundle or None)
            self.make = lambda timeout: http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            self.make = lambda timeout: http.client.HTTPConnection(host, port, timeout=timeout)
        self.idle: list[http.client.HTTPConnection] = []  # append and pop are atomic
        self._busy_lock = threading.Lock()
        self.busy: set[http.client.HTTPConnection] = set()
        on_stop(self)

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str], budget=None) -> Response:
        """One request on a kept-alive connection. Timeouts come from `budget` (never past
        the run's deadline). A large body goes out in pieces, each one sent counting as a
        sign of life: a slow link taking minutes for a big upload is not a silent endpoint,
        and one that stops reading is found within the timeout."""
        budget = budget or StorageBudget()
        conn = self._idle_connection() or self._connect(budget.connect_timeout())
        with self._busy_lock:
            self.busy.add(conn)
        try:
            conn.sock.settimeout(budget.timeout())
            conn.request(method, path, body=_pieces(conn, body, budget) if len(body) > _PIECE else body or None,
                         headers=headers)
            conn.sock.settimeout(budget.timeout())
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()
            raise
        finally:
            with self._busy_lock:
                self.busy.discard(conn)
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
            # keep-alive timeout): using it would fail and cost a retry. poll, not select:
            # select fails for descriptors of 1024 and above.
            if conn.sock is not None:
                readable = select.poll()
                readable.register(conn.sock, select.POLLIN)
                if not readable.poll(0):
                    return conn
            conn.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        conn = self.make(timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise _NotConnected(exc.errno, describe_socket_error(exc)) from exc
        return conn

    def abort_all(self) -> None:
        """Wake every request waiting on a connection (the run is stopping): shutting a
        socket down ends a blocked read at once, where closing it would not."""
        with self._busy_lock:
            busy = list(self.busy)
        for conn in busy:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass


def describe_socket_error(exc: BaseException) -> str:
    """A short reason for a failed connection or request."""
    if isinstance(exc, _NotConnected):
        return f"cannot connect: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_LISTED_PROPERTIES = {"Content-Length", "Content-MD5", "AccessTier", "LeaseState"}


def _listed(blob: ElementTree.Element) -> Listed:
    # One pass over the children: path lookups (findtext) cost three times as much CPU, a
    # tenth of a second per 5,000 blobs.
    name, encoded, version, metadata, properties = "", False, None, {}, {}
    for child in blob:
        tag = child.tag
        if tag == "Name":
            name, encoded = child.text or "", child.get("Encoded") == "true"
        elif tag == "Properties":
            properties = {p.tag: p.text for p in child if p.tag in _LISTED_PROPERTIES}
        elif tag == "Metadata":
            metadata = {m.tag.lower(): m.text or "" for m in child}
        elif tag == "VersionId":
            version = child.text or None
    md5 = properties.get("Content-MD5")
    return Listed(unquote(name) if encoded else name,  # Encoded: characters XML cannot carry
                  int(properties.get("Content-Length") or 0), base64.b64decode(md5) if md5 else None, metadata,
                  version, properties.get("AccessTier") or None, properties.get("LeaseState") or "available")


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
