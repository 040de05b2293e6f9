"""A link emulator on loopback: a TCP proxy that gives every byte a bandwidth share and a
round-trip delay, so the benchmarks can ask what a real network would change.

The kernel's netem qdisc would be the natural tool, but it is not built into every kernel (not
into this one); a proxy needs nothing but loopback. Bandwidth is one token bucket shared by
all connections (a node's NIC); delay is half the round-trip time each way, applied per chunk
without holding the stream back (a delay line, not a stop-and-wait), and to a connection's
end as well: a peer that closes is heard of a one-way delay later, as a FIN or RST would be.

What a sender has written when its peer goes away is what a closed answer costs a registry,
so the proxy sends as TCP would on that link: each direction of a connection starts with TCP's
initial window (10 segments) and doubles it every round trip it used it up (slow start), again
after an idle spell longer than TCP's minimum retransmission timeout, until the bucket alone
limits. The proxy reads no more than that from the target, through a small receive buffer,
and counts it (``from_target``: what the target sent onto the link). What it cannot change
is the target's own kernel, which sees loopback: it grows the connection's send buffer to
~2 MB within a round trip, and a registry's access log counts what its handler wrote there
when the connection closes, though none of it crossed the link. Through the old emulator (a
2.5 MB window open from the first byte, an unbounded delay line) an answer closed after a
round trip cost a registry 2-7 MB by its log; through this one ~2 MB by its log and ~100-200
KB on the link, as slow start would allow on a network.
"""

from __future__ import annotations

import math
import socket
import threading
from types import TracebackType

import trio

from devstack.registry import free_port

PIECE = 1024 * 1024
# Segments as on Ethernet, not loopback's 64 KiB: the target's send buffer grows by segments.
ETHERNET_MSS = 1448
INITIAL_WINDOW = 10 * ETHERNET_MSS  # RFC 6928, Linux's default
RESTART_IDLE = 0.2  # Linux's minimum RTO: an idle connection starts slow again after it
RECEIVE_BUFFER = 256 * 1024


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


class _SlowStart:
    """One direction's congestion window: ``INITIAL_WINDOW`` bytes per round trip, doubled
    after each round trip that used it all, back to the start after ``RESTART_IDLE`` idle."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.window = INITIAL_WINDOW
        self.left = INITIAL_WINDOW
        self.round_ends = 0.0

    async def allowance(self) -> int:
        """Bytes that may go now; waits for the next round trip when this one's are spent."""
        now = trio.current_time()
        if self.left <= 0 and now < self.round_ends:
            await trio.sleep_until(self.round_ends)
            now = trio.current_time()
        if now >= self.round_ends:
            if self.left <= 0:
                self.window *= 2
            self.left, self.round_ends = self.window, now + self.rtt
        return self.left

    def restart(self) -> None:
        """After an idle spell: TCP's window restarts (RFC 5681, 4.1)."""
        self.window = self.left = INITIAL_WINDOW
        self.round_ends = trio.current_time() + self.rtt

    def sent(self, size: int) -> None:
        self.left -= size


class _Line:
    """Bytes on their way through the delay line, at most ``capacity`` (a window's worth):
    a receiver that stops reading stops its sender, as TCP's flow control does, instead of
    the proxy taking in the rest of the answer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._room = trio.Event()

    async def enter(self, size: int) -> None:
        while self.held and self.held + size > self.capacity:
            await self._room.wait()
        self.held += size

    def leave(self, size: int) -> None:
        self.held -= size
        self._room.set()
        self._room = trio.Event()


class LinkEmulator:
    """Forwards ``127.0.0.1:<port>`` to ``target`` at ``mbit`` Mbit/s with ``rtt_ms``."""

    def __init__(self, target: str, mbit: float, rtt_ms: float) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.from_target = 0  # bytes the target sent onto the link (read from it)
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
                        nursery.start_soon(self._pipe, client, server, buckets[0], nursery, False)
                        nursery.start_soon(self._pipe, server, client, buckets[1], nursery, True)

            await trio.serve_listeners(handle, listeners)

    async def _connect(self) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
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
        from_target: bool,
    ) -> None:
        """Carries ``source``'s bytes to ``sink`` a one-way delay later, its end too (an empty
        piece): then the whole connection closes. A sink gone meanwhile stops the delivery
        only; the source is read on until its own end arrives, as a sender sends until the
        reset reaches it."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        line = _Line(max(RECEIVE_BUFFER, int(self._rate * self._delay * 2)))
        window = _SlowStart(2 * self._delay)

        async def deliver() -> None:
            async for due, data in receive:
                await trio.sleep_until(due)
                if not data:
                    break
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                line.leave(len(data))
            nursery.cancel_scope.cancel()

        nursery.start_soon(deliver)
        async with send:
            while True:
                try:
                    allowed = await window.allowance()
                    data = b""
                    with trio.move_on_after(max(RESTART_IDLE, window.rtt)) as idle:
                        data = await source.receive_some(min(PIECE, allowed))
                    if idle.cancelled_caught:
                        window.restart()
                        data = await source.receive_some(min(PIECE, await window.allowance()))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if data:
                    if from_target:
                        self.from_target += len(data)
                    await line.enter(len(data))
                    window.sent(len(data))
                    await bucket.take(len(data))
                await send.send((trio.current_time() + self._delay, data))
                if not data:
                    break
