"""Storage as users live with it, for the benchmark's latency scenario: an HTTPS Azurite that
also accepts Entra ID tokens (`--oauth basic`), reached through a relay that delays every
request; with the tests' managed-identity token endpoint (tests/azurite_auth.py) the flow signs
in with DefaultAzureCredential as on App Service.

Every tool and every sign-in mode goes through TLS here (real Azure is HTTPS only), so the
Entra ID, SAS and account-key runs differ in their sign-in alone. The relay ends TLS and opens
it again towards Azurite, which checks the bearer tokens itself.

Why a byte relay and not the tests' fault proxy (an HTTP server and client): it stands in for
the network, whose CPU is not on the machine that runs a backup, yet it shares that machine's
cores with the tool measured. It passes bytes on as they come, each chunk towards Azurite
`latency` seconds after it arrived (a request's last byte, so the request, is that much late;
answers are not delayed, as with the fault proxy's `latency`), and it reads the requests'
framing only to count them."""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import ssl
from pathlib import Path

_PAUSE_BYTES = 8 * 1024 * 1024  # bytes held or unsent towards one side before its sender is paused


class LatencyProxy:
    """The relay in a process of its own, so that its CPU is measured apart from the
    benchmark's and its buffers never count in a measured child's peak RSS (a child started
    with vfork inherits its parent's high-water mark)."""

    def __init__(self, upstream_port: int, cert: Path, key: Path, latency: float):
        context = multiprocessing.get_context("fork")
        self._requests = context.RawValue("q", 0)  # written by the relay's one thread only
        self._stop = context.Event()
        ports = context.SimpleQueue()
        self._process = context.Process(target=_serve, daemon=True,
                                        args=(upstream_port, cert, key, latency, self._requests, self._stop, ports))
        self._process.start()
        self.port = ports.get()

    @property
    def pid(self) -> int:
        return self._process.pid

    def count(self) -> int:
        """Requests received so far."""
        return self._requests.value

    def stop(self) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(upstream_port, cert, key, latency, requests, stop, ports) -> None:
    asyncio.run(_relay(upstream_port, cert, key, latency, requests, stop, ports))


async def _relay(upstream_port, cert, key, latency, requests, stop, ports) -> None:
    loop = asyncio.get_running_loop()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    upstream_tls = ssl.create_default_context(cafile=str(cert))

    def open_upstream(protocol):
        return loop.create_connection(lambda: protocol, "127.0.0.1", upstream_port, ssl=upstream_tls,
                                      server_hostname="127.0.0.1")

    server = await loop.create_server(lambda: _ClientSide(open_upstream, latency, requests), "127.0.0.1", 0,
                                      ssl=server_tls, backlog=1024)
    ports.put(server.sockets[0].getsockname()[1])
    await loop.run_in_executor(None, stop.wait)
    server.close()


class _ClientSide(asyncio.Protocol):
    """One client connection: its bytes go to Azurite `latency` seconds after they came, over a
    connection of its own; Azurite's answers come back at once."""

    def __init__(self, open_upstream, latency: float, requests):
        self._open_upstream, self._latency, self._requests = open_upstream, latency, requests
        self._counter = RequestCounter()
        self._due: collections.deque[tuple[float, bytes | None]] = collections.deque()  # None: close
        self._held = 0  # bytes in _due
        self._timer: asyncio.TimerHandle | None = None
        self._upstream: _UpstreamSide | None = None
        self._paused = False

    def connection_made(self, transport) -> None:
        self.transport, self._loop = transport, asyncio.get_running_loop()
        self._connecting = self._loop.create_task(self._connect())  # held: the loop keeps tasks weakly

    async def _connect(self) -> None:
        try:
            await self._open_upstream(_UpstreamSide(self))
        except OSError:
            self.transport.abort()

    def upstream_ready(self, upstream: "_UpstreamSide") -> None:
        self._upstream = upstream
        self._send_due()

    def data_received(self, data: bytes) -> None:
        before = self._counter.requests
        self._counter.feed(data)
        if self._counter.requests != before:
            self._requests.value += self._counter.requests - before
        self._hold(data)

    def connection_lost(self, exc) -> None:
        self._hold(None)  # Azurite's side closes once what the client sent has gone on

    def _hold(self, data: bytes | None) -> None:
        self._due.append((self._loop.time() + self._latency, data))
        self._held += len(data or b"")
        self._flow_control()
        if self._timer is None and self._upstream is not None:
            self._timer = self._loop.call_at(self._due[0][0], self._send_due)

    def _send_due(self) -> None:
        self._timer = None
        if self._upstream.transport.is_closing():  # Azurite closed the connection: the client's is closing too
            self._due.clear()
            return
        now = self._loop.time()
        while self._due and self._due[0][0] <= now:
            _, data = self._due.popleft()
            if data is None:
                self._upstream.transport.close()
                return
            self._held -= len(data)
            self._upstream.transport.write(data)
        if self._due:
            self._timer = self._loop.call_at(self._due[0][0], self._send_due)
        self._flow_control()

    def _flow_control(self) -> None:
        if self.transport.is_closing():
            return
        waiting = self._held + (self._upstream.transport.get_write_buffer_size() if self._upstream else 0)
        if waiting > _PAUSE_BYTES and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        elif waiting <= _PAUSE_BYTES // 2 and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # the client reads answers slower than Azurite sends them
        if self._upstream is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.transport.resume_reading()


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, client: _ClientSide):
        self._client = client

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._client.upstream_ready(self)

    def data_received(self, data: bytes) -> None:
        self._client.transport.write(data)

    def connection_lost(self, exc) -> None:
        self._client.transport.close()

    def resume_writing(self) -> None:
        self._client._flow_control()


class RequestCounter:
    """Counts the HTTP/1.1 requests in a client's byte stream, fed in any pieces: a header
    block, then a body of its Content-Length or in chunks (Transfer-Encoding: chunked)."""

    def __init__(self):
        self.requests = 0
        self._rest = b""  # an unfinished header block, chunk-size line or trailer line
        self._skip = 0  # body bytes still to pass over
        self._state = "head"  # or "chunk-size", "trailer"

    def feed(self, data: bytes) -> None:
        buffer = self._rest + data if self._rest else data  # _rest is empty inside a body
        self._rest, at = b"", 0
        while at < len(buffer):
            if self._skip:
                step = min(self._skip, len(buffer) - at)
                at += step
                self._skip -= step
                continue
            end = buffer.find(b"\r\n\r\n" if self._state == "head" else b"\r\n", at)
            if end < 0:
                self._rest = buffer[at:]
                return
            if self._state == "head":
                self.requests += 1
                self._body(buffer[at:end])
                at = end + 4
            elif self._state == "chunk-size":
                size = int(buffer[at:end].split(b";")[0], 16)
                at = end + 2
                if size:
                    self._skip = size + 2  # the chunk and its CRLF
                else:
                    self._state = "trailer"
            else:  # trailer lines, up to an empty one
                self._state = "trailer" if end > at else "head"
                at = end + 2

    def _body(self, head: bytes) -> None:
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                self._skip = int(value)
            elif name == b"transfer-encoding" and value.endswith(b"chunked"):
                self._state = "chunk-size"
