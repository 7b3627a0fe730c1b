"""A small HTTP stand-in for a storage account with blob versioning on, which Azurite
cannot emulate. It answers the requests a backup, its manifest and a restore send, shaped
as Azure's REST reference describes them for such an account:

- every write (Put Blob, Put Block List) creates a new version and answers with
  `x-ms-version-id`; the previous version stays readable with `?versionid=`;
- List Blobs names each blob's `VersionId` with `IsCurrentVersion` true, and with
  `include=versions` lists the previous versions too (no IsCurrentVersion);
- Delete Blob removes the current version only;
- Snapshot Blob works, and is counted, so a test can show none was made.

It checks no signature, keeps everything in memory and knows nothing of leases beyond
answering them: a stand-in for what versioning changes in the answers, not an emulator.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import re
import threading
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


class Version:
    def __init__(self, version_id, data, content_type, metadata, md5):
        self.version_id, self.data, self.content_type, self.metadata = version_id, data, content_type, metadata
        self.md5 = md5
        self.written = formatdate(usegmt=True)


class VersioningAccount:
    """The account's state and a server on a free port (`url`); use as a context manager."""

    def __init__(self):
        self.containers: dict[str, dict[str, list[Version]]] = {}
        self.current: dict[tuple[str, str], Version | None] = {}
        self.staged: dict[tuple[str, str, str], bytes] = {}
        self.requests: Counter[str] = Counter()
        self.reads: list[str] = []  # query strings of blob GETs
        self._clock = itertools.count(1)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}/devstoreaccount1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def new_version_id(self) -> str:
        # Azure's version ids are the write's time with 7 fraction digits
        base = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=next(self._clock))
        return base.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")

    def write(self, container, name, data, content_type, metadata, md5) -> Version:
        version = Version(self.new_version_id(), data, content_type, metadata, md5)
        self.containers[container].setdefault(name, []).append(version)
        self.current[(container, name)] = version
        return version


def _handler(account: VersioningAccount):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _parts(self):
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            path = unquote(url.path).split("/", 3)  # '', account, container, blob
            return (path[2] if len(path) > 2 else ""), (path[3] if len(path) > 3 else ""), query

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status, headers=None, body=b""):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("x-ms-request-id", "stub")
            self.send_header("x-ms-version", self.headers.get("x-ms-version", "2021-08-06"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, code):
            body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'
            self._send(status, {"x-ms-error-code": code, "Content-Type": "application/xml"}, body.encode())

        def _props(self, v: Version) -> dict:
            headers = {"Content-Type": v.content_type, "ETag": f'"0x{abs(hash(v.version_id)):X}"',
                       "Last-Modified": v.written, "x-ms-blob-type": "BlockBlob", "x-ms-version-id": v.version_id,
                       "x-ms-is-current-version": "true", "x-ms-lease-state": "available",
                       "x-ms-lease-status": "unlocked", "Accept-Ranges": "bytes"}
            if v.md5:
                headers["Content-MD5"] = base64.b64encode(v.md5).decode()
            headers.update({f"x-ms-meta-{k}": val for k, val in v.metadata.items()})
            return headers

        def do_PUT(self):
            container, name, q = self._parts()
            body = self._body()
            with account.lock:
                account.requests[f"PUT {q.get('comp') or q.get('restype') or 'blob'}"] += 1
                if not name:
                    if container in account.containers:
                        return self._error(409, "ContainerAlreadyExists")
                    account.containers[container] = {}
                    return self._send(201, {"ETag": '"0x1"'})
                if container not in account.containers:
                    return self._error(404, "ContainerNotFound")
                current = account.current.get((container, name))
                comp = q.get("comp")
                meta = {k[len("x-ms-meta-"):].lower(): v for k, v in self.headers.items()
                        if k.lower().startswith("x-ms-meta-")}
                if comp == "block":
                    account.staged[(container, name, q["blockid"])] = body
                    return self._send(201)
                if comp == "blocklist":
                    if self.headers.get("If-None-Match") == "*" and current is not None:
                        return self._error(409, "BlobAlreadyExists")
                    ids = re.findall(r"<Latest>([^<]*)</Latest>", body.decode())
                    data = b"".join(account.staged.pop((container, name, b)) for b in ids)
                    md5 = self.headers.get("x-ms-blob-content-md5")
                    v = account.write(container, name, data, self.headers.get("x-ms-blob-content-type", ""), meta,
                                      base64.b64decode(md5) if md5 else None)
                    return self._send(201, {"x-ms-version-id": v.version_id, "ETag": '"0x2"'})
                if comp == "snapshot":
                    return self._send(201, {"x-ms-snapshot": account.new_version_id()})
                if comp == "lease":
                    return self._send(201 if self.headers.get("x-ms-lease-action") == "acquire" else 200,
                                      {"x-ms-lease-id": self.headers.get("x-ms-proposed-lease-id")
                                       or self.headers.get("x-ms-lease-id", "")})
                md5 = self.headers.get("Content-MD5")
                if md5 and hashlib.md5(body).digest() != base64.b64decode(md5):
                    return self._error(400, "Md5Mismatch")
                v = account.write(container, name, body, self.headers.get("x-ms-blob-content-type", ""), meta,
                                  base64.b64decode(md5) if md5 else hashlib.md5(body).digest())
                return self._send(201, {"x-ms-version-id": v.version_id, "ETag": '"0x2"'})

        def do_DELETE(self):
            container, name, q = self._parts()
            self._body()
            with account.lock:
                account.requests["DELETE"] += 1
                if account.current.get((container, name)) is None:
                    return self._error(404, "BlobNotFound")
                account.current[(container, name)] = None  # its versions stay
                return self._send(202)

        def do_HEAD(self):
            container, name, q = self._parts()
            with account.lock:
                account.requests["HEAD"] += 1
                if container not in account.containers:
                    return self._error(404, "ContainerNotFound")
                if not name:
                    return self._send(200, {"ETag": '"0x1"'})
                v = self._version(container, name, q)
                if v is None:
                    return self._error(404, "BlobNotFound")
                return self._send(200, {**self._props(v), "Content-Length": str(len(v.data))})

        def _version(self, container, name, q):
            if "versionid" in q:
                return next((v for v in account.containers[container].get(name, []) if v.version_id == q["versionid"]),
                            None)
            return account.current.get((container, name))

        def do_GET(self):
            container, name, q = self._parts()
            with account.lock:
                if container not in account.containers:
                    return self._error(404, "ContainerNotFound")
                if not name and q.get("comp") == "list":
                    account.requests["GET list"] += 1
                    return self._list(container, q)
                account.requests["GET blob"] += 1
                account.reads.append(urlsplit(self.path).query)
                v = self._version(container, name, q)
                if v is None:
                    return self._error(404, "BlobNotFound")
                headers = self._props(v)
                wanted = self.headers.get("x-ms-range") or self.headers.get("Range")
                if wanted:
                    start, _, end = wanted.split("=", 1)[1].partition("-")
                    start, end = int(start), min(int(end or len(v.data) - 1), len(v.data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(v.data)}"
                    return self._send(206, headers, v.data[start : end + 1])
                return self._send(200, headers, v.data)

        def _list(self, container, q):
            prefix, delimiter = q.get("prefix", ""), q.get("delimiter")
            include = set(filter(None, q.get("include", "").split(",")))
            items, prefixes = [], set()
            for name in sorted(account.containers[container]):
                if not name.startswith(prefix):
                    continue
                if delimiter and delimiter in name[len(prefix):]:
                    prefixes.add(name[: len(prefix) + name[len(prefix):].index(delimiter) + 1])
                    continue
                current = account.current.get((container, name))
                for v in account.containers[container][name]:
                    if v is current or "versions" in include:
                        items.append((name, v, v is current))
            xml = [f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="{account.url}/" '
                   f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix><Blobs>']
            for name, v, is_current in items:
                xml.append(f"<Blob><Name>{escape(name)}</Name><VersionId>{v.version_id}</VersionId>"
                           + ("<IsCurrentVersion>true</IsCurrentVersion>" if is_current else "")
                           + f"<Properties><Last-Modified>{v.written}</Last-Modified><Etag>0x1</Etag>"
                           f"<Content-Length>{len(v.data)}</Content-Length>"
                           f"<Content-Type>{escape(v.content_type)}</Content-Type>"
                           + (f"<Content-MD5>{base64.b64encode(v.md5).decode()}</Content-MD5>" if v.md5 else "")
                           + "<BlobType>BlockBlob</BlobType><LeaseStatus>unlocked</LeaseStatus>"
                           "<LeaseState>available</LeaseState></Properties>")
                if "metadata" in include:
                    xml.append("<Metadata>" + "".join(f"<{k}>{escape(val)}</{k}>" for k, val in v.metadata.items())
                               + "</Metadata>")
                xml.append("</Blob>")
            xml += [f"<BlobPrefix><Name>{escape(p)}</Name></BlobPrefix>" for p in sorted(prefixes)]
            xml.append("</Blobs><NextMarker /></EnumerationResults>")
            return self._send(200, {"Content-Type": "application/xml"}, "".join(xml).encode())

    return Handler
