"""GET and HEAD requests made by the standard library's ``http.client`` in worker threads, as
an httpx transport: everything above it (authorization, redirects, retries, mirrors, event
hooks) stays httpx's and ours.

Blob bytes are most of what a node receives, and through httpcore and h11 each received byte
was copied five times in the event loop (the socket's bytes, h11's buffer, two slices, the
chunk handed up) before the range's pieces were joined: 1.7 CPU-s per GiB in the FUSE loop's
thread, holding the GIL. ``http.client`` reads a body of known length straight into the bytes
it returns, in a worker thread, GIL released while it waits: 0.8 CPU-s per GiB, at 745 MiB/s
instead of 500 (16 MiB ranges from the loopback registry); a cold 1 GiB zstd:chunked model
ready in 4.26 s against 4.61, the daemon at 4.52 CPU-s per GiB against 4.90 (medians of 5,
alternating). Requests with a body (uploads, token forms) go to
httpx's own transport.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import math
import re
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import trio

# A 206 to a request for bounded ranges (``bytes=a-b,c-d``), of known length up to this size,
# is read in one call: its caller wants it whole. Any other body (a whole blob streamed,
# from which readers take what has arrived; one of unknown length) is read in pieces of
# PIECE_BYTES, so that progress and the caller's size limit apply as it arrives.
WHOLE_BODY_BYTES = 32 * 1024 * 1024
PIECE_BYTES = 1024 * 1024
_BOUNDED_RANGES = re.compile(r"bytes=\d+-\d+(\s*,\s*\d+-\d+)*")
# Errors of a kept-alive connection that the server closed while it was idle: the request is
# sent again once, on a new connection (as httpcore does).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

T = TypeVar("T")


@dataclass
class _Idle:
    """Kept-alive connections by (scheme, host, port)."""

    keep: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = field(
        default_factory=dict
    )
    closed: bool = False

    def take(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        with self.lock:
            idle = self.connections.get(origin)
            return idle.pop() if idle else None

    def give(self, origin: tuple[str, str, int], connection: http.client.HTTPConnection) -> None:
        with self.lock:
            idle = self.connections.setdefault(origin, [])
            if not self.closed and len(idle) < self.keep:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            connections = [c for idle in self.connections.values() for c in idle]
            self.connections.clear()
        for connection in connections:
            connection.close()


class ThreadedTransport(httpx.AsyncBaseTransport):
    """Sends GET and HEAD with ``http.client`` from worker threads (at most
    ``max_connections`` waiting for answers, as many reading bodies); anything else through
    ``fallback``."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        timeout: httpx.Timeout,
        fallback: httpx.AsyncBaseTransport,
        max_connections: int = 64,
        keep_alive: int = 32,
    ) -> None:
        self._ssl = ssl_context
        self._connect_timeout = timeout.connect
        self._read_timeout = timeout.read
        self._fallback = fallback
        self._sending = trio.CapacityLimiter(max_connections)
        self._receiving = trio.CapacityLimiter(max_connections)
        self._idle = _Idle(keep_alive)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method not in ("GET", "HEAD") or request.headers.get("content-length"):
            return await self._fallback.handle_async_request(request)
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        exchange = _Exchange(request)
        response = None
        idle = self._idle.take(origin)
        if idle is not None:
            response = await exchange.run(functools.partial(exchange.send, idle), self._sending)
        if response is None:
            connection = await self._open(origin, request)
            response = await exchange.run(
                functools.partial(exchange.send, connection, fresh=True), self._sending
            )
        if response is None:
            raise httpx.RemoteProtocolError("connection closed before an answer", request=request)
        exchange.keep_in(self._idle, origin)
        return httpx.Response(
            response.status,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.getheaders()],
            stream=_Body(exchange, response, self._receiving, _wants_whole(request, response)),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": response.reason.encode("latin-1"),
            },
        )

    async def aclose(self) -> None:
        self._idle.close()
        await self._fallback.aclose()

    async def _open(
        self, origin: tuple[str, str, int], request: httpx.Request
    ) -> http.client.HTTPConnection:
        """A new connection to ``origin``, its socket made in the event loop's thread (a
        thread's network namespace is its own, and worker threads are shared), handed to
        ``http.client`` as a blocking socket with the read timeout."""
        scheme, host, port = origin
        try:
            with trio.fail_after(self._connect_timeout or math.inf):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError as exc:
            raise httpx.ConnectTimeout(
                f"no connection in {self._connect_timeout}s", request=request
            ) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or repr(exc), request=request) from exc
        sock = socket.socket(fileno=stream.socket.detach())
        sock.settimeout(self._read_timeout)
        if scheme != "https":
            connection = http.client.HTTPConnection(host, port)
            connection.sock = sock
            return connection
        wrap = functools.partial(self._ssl.wrap_socket, sock, server_hostname=host)
        try:
            secure = await trio.to_thread.run_sync(wrap, limiter=self._sending)
        except OSError as exc:  # ssl.SSLError among them
            sock.close()
            raise httpx.ConnectError(str(exc) or repr(exc), request=request) from exc
        connection = http.client.HTTPSConnection(host, port, context=self._ssl)
        connection.sock = secure
        return connection


class _Exchange:
    """One request and its response on one connection. Each step runs in a worker thread;
    a step the caller gives up on (cancelled) is abandoned: its socket is shut down, which
    wakes the thread, and the thread closes the connection."""

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        self._target = request.url.raw_path.decode("ascii")
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._busy = False  # a worker thread runs a step
        self._abandoned = False
        self._idle: tuple[_Idle, tuple[str, str, int]] | None = None

    def keep_in(self, idle: _Idle, origin: tuple[str, str, int]) -> None:
        """Where the connection goes when the response is done with, if it may be kept."""
        self._idle = (idle, origin)

    async def run(self, step: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        with self._lock:
            self._busy = True
        try:
            return await trio.to_thread.run_sync(
                self._in_thread, step, limiter=limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            self._abandon()
            raise

    def _in_thread(self, step: Callable[[], T]) -> T:
        try:
            result = step()
        except BaseException as exc:
            with self._lock:
                self._busy = False
                self._close()
            raise _translated(exc, self._request) from exc
        with self._lock:
            self._busy = False
            if self._abandoned:
                self._close()
        return result

    def _abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if not self._busy:
                self._close()
                return
            connection = self._connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile by the thread
                connection.sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def send(
        self, connection: http.client.HTTPConnection, fresh: bool = False
    ) -> http.client.HTTPResponse | None:
        """The response, its headers read; None if ``connection``, kept alive, turns out
        closed by the server while idle (it is closed here; a fresh one is wanted)."""
        with self._lock:
            self._connection = connection
        try:
            connection.putrequest(
                self._request.method, self._target, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self._request.headers.raw:  # as httpx would send them
                connection.putheader(name, value)
            connection.endheaders()
            return connection.getresponse()
        except _STALE:
            if fresh:
                raise
            with self._lock:
                self._close()
            return None

    def finish(self, response: http.client.HTTPResponse) -> None:
        """The caller is done with the response: its connection is kept for the next request
        if the body was read to its end and the server keeps it open; closed otherwise."""
        with self._lock:
            connection = self._connection
            if self._busy or self._abandoned or connection is None:
                return  # the thread still at work closes it
            self._connection = None
        if response.isclosed() and not response.will_close and self._idle is not None:
            idle, origin = self._idle
            idle.give(origin, connection)
        else:
            connection.close()


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        exchange: _Exchange,
        response: http.client.HTTPResponse,
        limiter: trio.CapacityLimiter,
        whole: bool,
    ) -> None:
        self._exchange = exchange
        self._response = response
        self._limiter = limiter
        self._whole = whole

    async def __aiter__(self) -> AsyncIterator[bytes]:
        step = self._response.read if self._whole else self._piece
        while not self._response.isclosed():
            data = await self._exchange.run(step, self._limiter)
            if not data:
                break
            yield data

    def _piece(self) -> bytes:
        data = self._response.read(PIECE_BYTES)
        if not data and self._response.length:
            # http.client ends a body cut short quietly, where h11 raises.
            raise http.client.IncompleteRead(b"", self._response.length)
        return data

    async def aclose(self) -> None:
        self._exchange.finish(self._response)


def _wants_whole(request: httpx.Request, response: http.client.HTTPResponse) -> bool:
    """A 206 to bounded ranges: what the caller asked for, and it wants all of it. (A 200 to
    them is the whole blob, which readers take from as it arrives.)"""
    length = response.length
    return (
        response.status == 206
        and bool(_BOUNDED_RANGES.fullmatch(request.headers.get("range", "")))
        and length is not None
        and length <= WHOLE_BODY_BYTES
    )


def _translated(exc: BaseException, request: httpx.Request) -> BaseException:
    """``exc`` as the httpx error the retry policy and the error messages know."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(str(exc) or "timed out", request=request)
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(str(exc) or repr(exc), request=request)
    if isinstance(exc, OSError):
        return httpx.ReadError(str(exc) or repr(exc), request=request)
    return exc
