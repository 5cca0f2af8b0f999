"""The ingress replica's own HTTP server: the data plane's port, without Serve's proxy.

Every request through Serve's HTTP path costs ~8-9 ms of CPU on a 2-core EPYC before any
work (proxy, router, actor call, replica wrappers; docs/benchmarks/floor.md); Serve's
direct ingress saves ~1 ms of it. The same empty request on this server costs 0.3-0.7 ms. So
each ingress replica runs one, on the application's `http_port`, in the replica's own event
loop, calling the same handler Serve's proxy calls.

The port is shared: the socket is bound with SO_REUSEPORT, so every ingress replica on a
node listens on it and the kernel spreads connections over them. Serve's proxy stays up on
its own port (any node, every app) as the second way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core import errors
from core.errors import DataPlaneError
from serve.http_api import error_response, new_request_id

log = logging.getLogger("ray.serve")

Handler = Callable[[Request], Awaitable[Response]]


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the API's JSON errors and guards against idle clients.

    - A request it cannot parse (a bad Content-Length, a malformed request line) gets the API's
      JSON 400 instead of uvicorn's plain text.
    - Headers must arrive within `header_timeout_s` of the connection opening or of a request's
      first byte (uvicorn waits for ever): JSON 408, then the connection is closed. Between
      requests uvicorn's keep-alive timeout closes idle connections; a slow body is the
      handler's (body_timeout_s).
    - At most `max_connections_per_client` open connections per client address (0: no limit):
      one more gets JSON 503 `too_many_connections` and is closed.
    Subclassed per server (IngressHttpServer) with these class attributes set.
    """

    header_timeout_s: float = 10.0
    max_connections_per_client: int = 0
    per_client: Counter  # open connections by client host, shared by the server's connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._host = self.client[0] if self.client else None
        self.per_client[self._host] += 1
        limit = self.max_connections_per_client
        if limit and self._host is not None and self.per_client[self._host] > limit:
            self._write_error(errors.too_many_connections(limit))
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.per_client[self._host] -= 1
        if self.per_client[self._host] <= 0:
            del self.per_client[self._host]
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # a new request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._write_error(errors.request_timeout(f"request headers not received within "
                                                     f"{self.header_timeout_s:g} s"))

    def send_400_response(self, msg: str) -> None:
        self._write_error(errors.bad_request(f"malformed HTTP request: {msg}"))

    def _write_error(self, err: DataPlaneError) -> None:
        """The API's JSON error, written straight to the socket, and the connection closed."""
        rid = new_request_id()
        response = error_response(err, rid)
        head = [f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}\r\n".encode(),
                b"x-request-id: " + rid.encode() + b"\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in response.raw_headers]
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", response.body]))
        self.transport.close()


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # The replica's signals belong to Ray.
        yield


def shared_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} for the visionray HTTP port: {exc.strerror} "
                                 f"(another program has it; set the app's http_port, or null for Serve's "
                                 f"proxy only)") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class IngressHttpServer:
    """uvicorn on a shared port, every request handed to `handle` (the ingress's own-port handler)."""

    def __init__(self, handle: Handler, host: str, port: int, keep_alive_s: float = 5.0,
                 header_timeout_s: float = 10.0, max_connections_per_client: int = 0):
        self.handle = handle
        self.host, self.port = host, port
        self.ongoing = 0  # requests being answered now: reported to the autoscaler
        protocol = type("IngressHttpProtocol", (_GuardedProtocol,), {
            "header_timeout_s": header_timeout_s, "max_connections_per_client": max_connections_per_client,
            "per_client": Counter()})
        self._config = uvicorn.Config(
            self._asgi, interface="asgi3", lifespan="off", http=protocol, loop="none", access_log=False,
            proxy_headers=False,
            log_level="warning", timeout_keep_alive=keep_alive_s, server_header=False,
        )
        self._server: _QuietServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sock = shared_socket(self.host, self.port)
        self._server = _QuietServer(self._config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it stopped
                raise RuntimeError(f"the HTTP server on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)
        log.info("visionray HTTP on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    async def _asgi(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.ongoing += 1
        try:
            # The handler answers every error itself; anything raised here uvicorn logs and turns into a 500.
            response = await self.handle(Request(scope, receive))
            await response(scope, receive, send)
        finally:
            self.ongoing -= 1
