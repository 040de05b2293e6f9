"""Coordination of fetches across readers: each segment fetched once at a time, readers before
background work, work that can wait until fetching is quiet, and a short memory of fetches that
ran out their deadline."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Hashable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio
import trio.lowlevel

# After a read-ahead read fails, the kernel at once asks again for the one page it wanted: a
# segment whose fetch ran out the deadline this recently fails that read at once, so a reader
# waits the deadline once, not twice.
GAVE_UP_SECONDS = 2.0


class Fetch(enum.Enum):
    """Why segments are fetched: it decides who waits for them."""

    READ = "read"  # a reader waits
    READ_AHEAD = "read-ahead"  # a sequential reader wants them next
    PREFETCH = "prefetch"  # every segment of the layer, in the background

    @property
    def background(self) -> bool:
        return self is not Fetch.READ


class ReaderGate:
    """Background fetches step aside while any reader waits on the network.

    A count, not an event: with an event replaced on every foreground fetch, two overlapping
    fetches left the first one's event unset for ever, and the layer's background fetch never
    resumed."""

    def __init__(self) -> None:
        self._waiting = 0
        self._idle = trio.lowlevel.ParkingLot()

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._idle.unpark_all()

    async def wait_idle(self) -> None:
        """Returns when no reader waits on the network (at once if none does)."""
        while self._waiting:
            await self._idle.park()


class FetchActivity:
    """Whether any fetch is under way daemon-wide, and since when none is: work that can wait
    (hashing a complete layer for its diff ID and making its cache durable) waits until the
    fetching has been quiet a while, so that it does not run inside a model's load.

    Run as each layer completed, at nice +10, that work ran beside the background fetch of the
    image's next layers, whose decoding runs at nice +10 too, and its ``fdatasync`` wrote the
    layer to the disk the registry was reading. Cold 1 GiB, 3 runs each taking turns with the
    code before: zstd:chunked ready in 3.82-4.48 s (median 4.25) against 4.05-4.90 (4.53), the
    daemon at 4.4-5.2 CPU-s per GiB of the load against 5.4-6.6; gzip eStargz 4.59-4.97 s
    (4.94) against 4.82-5.39 (5.33), 5.8-6.5 CPU-s against 7.0-7.6. An hour later, on a
    faster machine: zstd:chunked 3.36-3.57 s against 3.52-3.96, 3.7-3.9 CPU-s against 4.7-5.0.
    The price: the cache's copy of the model stays in the page cache a few seconds longer."""

    def __init__(self) -> None:
        self._busy = 0
        self._quiet_since = float("-inf")  # nothing fetched yet: quiet for ever

    @contextmanager
    def fetching(self) -> Iterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._quiet_since = trio.current_time()

    def quiet_for(self) -> float:
        """Seconds since the last fetch ended (0 while one is under way)."""
        if self._busy:
            return 0.0
        return trio.current_time() - self._quiet_since

    async def wait_quiet(self, seconds: float, at_most: float) -> bool:
        """Returns once no fetch has been under way for ``seconds``, or after ``at_most``
        seconds whatever is fetched (a node that never stops fetching still gets its work
        done); True if it was quiet. Never longer than half of what is left of the caller's
        deadline: the work that waits needs the other half (a short deadline on a busy node
        would otherwise refuse a good layer for want of time to hash it)."""
        left = max(0.0, trio.current_effective_deadline() - trio.current_time())
        with trio.move_on_after(min(at_most, left / 2)):
            while (quiet := self.quiet_for()) < seconds:
                await trio.sleep(seconds - quiet)
            return True
        return False


class ByteBudget:
    """Bytes in flight daemon-wide (fetched and being decoded), so that no image, however
    its chunks are sized and however many layers read at once, takes the daemon's memory."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total
        self._freed = trio.lowlevel.ParkingLot()

    @asynccontextmanager
    async def hold(self, count: int) -> AsyncIterator[None]:
        """Waits until ``count`` bytes (at most the whole budget) are free, holds them."""
        count = min(count, self.total)
        while self.available < count:
            await self._freed.park()
        self.available -= count
        try:
            yield
        finally:
            self.available += count
            self._freed.unpark_all()


class SingleFlight:
    """At most one fetch per key at a time; later askers wait for it, then look again."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, trio.Event] = {}
        self._gave_up: dict[Hashable, float] = {}

    def claim(self, key: Hashable) -> trio.Event | None:
        """None: the caller fetches ``key`` and must ``release`` it; else wait on the event."""
        event = self._inflight.get(key)
        if event is not None:
            return event
        self._inflight[key] = trio.Event()
        return None

    def release(self, key: Hashable) -> None:
        """Wakes those waiting for ``key``: it is stored, or its fetch failed."""
        event = self._inflight.pop(key, None)
        if event is not None:
            event.set()

    def in_flight(self, key: Hashable) -> bool:
        return key in self._inflight

    def give_up(self, keys: Iterable[Hashable]) -> None:
        """Remembers keys whose fetch ran out the deadline, for ``GAVE_UP_SECONDS``."""
        now = trio.current_time()
        self._gave_up = {k: t for k, t in self._gave_up.items() if now - t < GAVE_UP_SECONDS}
        self._gave_up.update((key, now) for key in keys)

    def gave_up_recently(self, key: Hashable) -> bool:
        when = self._gave_up.get(key)
        return when is not None and trio.current_time() - when < GAVE_UP_SECONDS
