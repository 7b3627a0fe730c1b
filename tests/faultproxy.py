"""A fault-injecting HTTP proxy in front of Azurite, for the resilience tests.

It forwards every request to the upstream blob service and, on writes (PUT), can answer
503 ServerBusy or 500 OperationTimedOut instead (the write never lands), or forward the
write and then drop the connection without answering (the write landed, the client cannot
know). It can add latency to every request, throttle any request (429 with a Retry-After),
and counts what it did. It can also stop answering part-way, as storage does when it goes
away: after N requests, accept connections and never answer (`silent_after`), or refuse new
connections and cut open ones (`refuse_after`). With `tls=(cert, key)` it serves HTTPS in front of an HTTPS upstream
(the Entra ID Azurite), trusting that certificate. `before` lets a test act as another
writer just before a request goes on; `gate` holds matching requests until `release()`."""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
import time
from collections import Counter
from urllib.parse import unquote, urlsplit

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from yarl import URL

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}

_ERROR_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
    "<Message>Injected by the test proxy.</Message></Error>"
)


class FaultProxy:
    """Start with `with FaultProxy(upstream_port) as proxy:`; `proxy.port` is where to connect."""

    def __init__(self, upstream_port: int, *, seed: int = 1, tls: tuple | None = None):
        self.tls = tls
        self.upstream = f"{'https' if tls else 'http'}://127.0.0.1:{upstream_port}"
        self.rng = random.Random(seed)
        self.busy_rate = 0.0  # share of writes answered 503 ServerBusy
        self.timeout_rate = 0.0  # share of writes answered 500 OperationTimedOut
        self.drop_rate = 0.0  # share of writes forwarded, then the connection dropped
        self.latency = 0.0  # seconds added to every request
        self.throttle_rate = 0.0  # share of requests (any kind) answered 429 TooManyRequests
        self.throttle_from = 0  # ... from this many requests on
        self.retry_after: str | None = None  # the Retry-After header of those answers
        self.retry_gaps: list[float] = []  # seconds from a 429 to the same request's next attempt
        self._throttled_at: dict[tuple[str, str], float] = {}
        self.blob_write_status: int | None = None  # answer every blob write with this status
        self.faults: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()  # blob name -> writes that landed (Put Blob, Put Block List)
        self.requests = 0
        self.in_flight = self.most_in_flight = 0  # requests being answered now, and the most at once
        self.log: list[tuple[str, str, str]] = []  # (method, container/blob path, comp or restype) of each request
        self.silent_after: int | None = None  # from this many requests on, never answer
        self.refuse_after: int | None = None  # from this many requests on, refuse connections
        self.went_away_at: float | None = None  # time.monotonic() of the last answer before that
        # Called as before(method, "container/blob" path, query, headers) in a worker thread before a
        # request is forwarded (the request waits for it): another writer acting at that moment.
        self.before = None
        self.held = threading.Event()  # set once a request waits at the gate
        self.gate = None  # a predicate like `before`'s: matching requests wait until release()
        self._open: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0

    # The test thread reads these while the proxy thread writes them.
    def injected(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    def landed(self) -> int:
        with self._lock:
            return sum(self.writes.values())

    def wait_until_idle(self, timeout: float = 30) -> None:
        """Return once no client connection is open and no request is being handled: after a
        client was killed, every write it had sent has landed or never will."""
        async def open_connections() -> int:  # read in the proxy's loop, which changes them
            return len(self._runner.server.connections)

        deadline = time.monotonic() + timeout
        while asyncio.run_coroutine_threadsafe(open_connections(), self._loop).result(10):
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy still has open connections after {timeout} s")
            time.sleep(0.02)

    def __enter__(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fault proxy did not start")
        return self

    def release(self) -> None:
        """Let the requests held at the gate (and any later ones) go on."""
        self._loop.call_soon_threadsafe(self._open.set)

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._open.set)
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._open = asyncio.Event()
        server_tls = upstream_tls = None
        if self.tls:
            cert, key = map(str, self.tls)
            server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_tls.load_cert_chain(cert, key)
            upstream_tls = ssl.create_default_context(cafile=cert)
        self._session = ClientSession(
            connector=TCPConnector(limit=100, ssl=upstream_tls if upstream_tls else True), auto_decompress=False,
            timeout=ClientTimeout(total=300)
        )
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Handlers held by silent_after end when the proxy stops: no long graceful wait.
        runner = self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        self._listener = site._server
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self._session.close()

    def _roll(self) -> str | None:
        with self._lock:
            r = self.rng.random()
        if r < self.busy_rate:
            return "503"
        if r < self.busy_rate + self.timeout_rate:
            return "500"
        if r < self.busy_rate + self.timeout_rate + self.drop_rate:
            return "drop"
        return None

    def _throttle(self, request: web.Request, number: int) -> bool:
        """Whether to answer this request 429; notes how long a throttled request took to
        come again (the same method and URL: the SDK gives each attempt a new request id)."""
        key, now = (request.method, request.raw_path), time.monotonic()
        with self._lock:
            if key in self._throttled_at:
                self.retry_gaps.append(now - self._throttled_at.pop(key))
            if number <= self.throttle_from or self.rng.random() >= self.throttle_rate:
                return False
            self._throttled_at[key] = now
            self.faults["429"] += 1
            return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1  # in the proxy's loop: no lock needed
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.requests += 1
            number = self.requests
            query = request.rel_url.query
            self.log.append((request.method, unquote(request.rel_url.path).split("/", 2)[-1],
                             query.get("comp") or query.get("restype") or ""))
        if self.refuse_after is not None and number > self.refuse_after:
            if self.went_away_at is None:
                self.went_away_at = time.monotonic()
                self._listener.close()  # new connections are refused from now on
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if self.silent_after is not None and number > self.silent_after:
            if self.went_away_at is None:
                self.went_away_at = time.monotonic()
            await self._stop.wait()  # accepted, read, never answered
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.throttle_rate and self._throttle(request, number):
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return _error(429, "TooManyRequests", headers)
        is_write = request.method == "PUT"
        blob = _blob_name(request)
        if is_write and blob and self.blob_write_status:
            return _error(self.blob_write_status, "AuthenticationFailed")
        fault = self._roll() if is_write else None
        if fault in ("503", "500"):
            with self._lock:
                self.faults[fault] += 1
            return _error(int(fault), "ServerBusy" if fault == "503" else "OperationTimedOut")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        where = unquote(request.rel_url.path).split("/", 2)[-1]
        if self.gate is not None and not self._open.is_set() and self.gate(request.method, where, query, headers):
            self.held.set()
            await self._open.wait()
        if self.before is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.before, request.method, where, query, headers)
        # The path exactly as the client encoded it: the request's signature covers it.
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body, skip_auto_headers=("Content-Type", "User-Agent")
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            if request.method == "HEAD":  # no body, but the length is the blob's size
                out_headers["Content-Length"] = upstream.headers.get("Content-Length", "0")
        query = request.rel_url.query
        if is_write and blob and status == 201 and query.get("comp") in (None, "blocklist"):
            with self._lock:
                self.writes[blob] += 1
        if fault == "drop":
            with self._lock:
                self.faults["drop"] += 1
            request.transport.abort()  # the write landed; the client never hears so
            return web.Response(status=status)
        return web.Response(status=status, headers=out_headers, body=payload)


def _blob_name(request: web.Request) -> str | None:
    """The blob a request is about, or None for account and container requests."""
    parts = urlsplit(str(request.rel_url)).path.split("/", 3)  # "", account, container, blob
    if len(parts) < 4 or request.rel_url.query.get("restype") == "container":
        return None
    return unquote(parts[3])


def _error(status: int, code: str, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=_ERROR_BODY.format(code=code),
        headers={"Content-Type": "application/xml", "x-ms-error-code": code, **(headers or {})},
    )
