"""A link emulator on loopback: a TCP proxy that gives every byte a bandwidth share and a
round-trip delay, so the benchmarks can ask what a real network would change.

The kernel's netem qdisc would be the natural tool, but it is not built into every kernel (not
into this one); a proxy needs nothing but loopback. Bandwidth is one token bucket shared by
all connections (a node's NIC); delay is half the round-trip time each way, applied per chunk
without holding the stream back (a delay line, not a stop-and-wait). The proxy's socket to the
target takes no more than the link's bandwidth-delay product (and 64 KiB at least) into its
receive buffer, as a TCP window on that link would: on loopback the kernel would otherwise let
the target push megabytes into the connection at once, and a connection closed early would
seem to have cost it far more than it would over a network.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import trio

from devstack.registry import free_port

PIECE = 1024 * 1024
# Segments as on Ethernet, not loopback's 64 KiB: the target's send buffer grows by segments.
ETHERNET_MSS = 1448


class _Bucket:
    def __init__(self, rate_bytes: float) -> None:
        self.rate = rate_bytes
        self.next_free = 0.0

    async def take(self, size: int) -> None:
        now = trio.current_time()
        start = max(now, self.next_free)
        self.next_free = start + size / self.rate
        if self.next_free > now:
            await trio.sleep(self.next_free - now)


class LinkEmulator:
    """Forwards ``127.0.0.1:<port>`` to ``target`` at ``mbit`` Mbit/s with ``rtt_ms``."""

    def __init__(self, target: str, mbit: float, rtt_ms: float) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._rate = mbit * 1e6 / 8
        self._delay = rtt_ms / 2000
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    def __enter__(self) -> LinkEmulator:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None and self._cancel is not None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(10)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        buckets = (_Bucket(self._rate), _Bucket(self._rate))  # full duplex
        with trio.CancelScope() as self._cancel:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self._ready.set()

            async def handle(client: trio.SocketStream) -> None:
                async with client:
                    server = await self._connect()
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, client, server, buckets[0], nursery)
                        nursery.start_soon(self._pipe, server, client, buckets[1], nursery)

            await trio.serve_listeners(handle, listeners)

    async def _connect(self) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        window = max(64 * 1024, int(self._rate * self._delay * 2))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
        try:
            await sock.connect((self.target_host, self.target_port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def _pipe(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        bucket: _Bucket,
        nursery: trio.Nursery,
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](1024)

        async def deliver() -> None:
            async for due, data in receive:
                await trio.sleep_until(due)
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()
                    return
            nursery.cancel_scope.cancel()

        nursery.start_soon(deliver)
        async with send:
            while True:
                try:
                    data = await source.receive_some(PIECE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                await bucket.take(len(data))
                await send.send((trio.current_time() + self._delay, data))
