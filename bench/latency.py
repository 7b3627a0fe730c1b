"""Storage as users live with it, for the benchmark's latency scenario: an HTTPS Azurite that
also accepts Entra ID tokens (`--oauth basic`), reached through the project's fault proxy
adding a fixed delay to every request; with the tests' managed-identity token endpoint
(tests/azurite_auth.py) the flow signs in with DefaultAzureCredential as on App Service.

Every tool and every sign-in mode goes through TLS here (real Azure is HTTPS only), so the
Entra ID, SAS and account-key runs differ in their sign-in alone. The proxy ends TLS and
opens it again towards Azurite, which checks the bearer tokens itself."""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from tests.faultproxy import FaultProxy


class LatencyProxy:
    """The proxy in a process of its own: it holds request bodies in memory (64 MiB ones
    too), which in the benchmark's process would count in every measured child's peak RSS
    (a child started with vfork inherits its parent's high-water mark)."""

    def __init__(self, upstream_port: int, cert: Path, key: Path, latency: float):
        context = multiprocessing.get_context("fork")
        self._requests = context.Value("q", 0)
        self._stop = context.Event()
        ports = context.SimpleQueue()
        self._process = context.Process(target=_serve_proxy, daemon=True,
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


def _serve_proxy(upstream_port, cert, key, latency, requests, stop, ports) -> None:
    with TlsLatencyProxy(upstream_port, cert, key, latency, requests) as proxy:
        ports.put(proxy.port)
        stop.wait()


class TlsLatencyProxy(FaultProxy):
    """The fault proxy (its `latency`) speaking HTTPS on both sides: TLS ends at the proxy, so
    it can delay and count requests, and starts again towards Azurite."""

    def __init__(self, upstream_port: int, cert: Path, key: Path, latency: float, requests):
        super().__init__(upstream_port)
        self.upstream = f"https://127.0.0.1:{upstream_port}"
        self.latency = latency
        self.shared_requests = requests  # a multiprocessing.Value the benchmark reads
        self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_tls.load_cert_chain(cert, key)
        self._client_tls = ssl.create_default_context(cafile=str(cert))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self.shared_requests.get_lock():
            self.shared_requests.value += 1
        return await super()._handle(request)

    async def _serve(self) -> None:  # FaultProxy._serve with TLS on both sides
        self._stop = asyncio.Event()
        self._session = ClientSession(connector=TCPConnector(limit=100, ssl=self._client_tls),
                                      auto_decompress=False, timeout=ClientTimeout(total=300))
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._server_tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self._session.close()
