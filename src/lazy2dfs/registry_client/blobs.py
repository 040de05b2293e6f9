"""Range reads of one blob, with the fallbacks real registries, blob stores and pull-through
mirrors need.

Registries commonly redirect blob GETs to storage (S3, GCS, a CDN) with a pre-signed URL. The
first read resolves the redirect and later reads go straight to storage; when the URL expires
(401/403 from storage) the registry is asked again, once per read. Several ranges go in one
``multipart/byteranges`` request; a registry that refuses that (400/416) is remembered and
asked one range at a time. An answer is read only as far as the ranges asked for can take:
a registry sending more is an error, not a reason to hold its bytes in memory.

Pull-through mirrors. The CNCF registry in proxy mode answers a request (GET or HEAD, Range
or not) for a blob it does not hold yet with 200 and the whole blob, copied from the origin for
that very request, and fetches it from the origin once more for its own store; only once
stored does it answer ranges with 206. Read as it comes, such an answer costs the origin the
blob twice for one node and N+1 times for N nodes at once. Hence a blob's first request to a
mirror (an endpoint with another after it in hosts.toml) is a one-byte range whose 200 is
closed unread: the mirror's store goes on, its copy for us stops after what was in flight.
Meanwhile one task asks again, at growing intervals, until the mirror answers 206, and reads
of the blob wait for that (``_warm``): the origin sends the blob about once for the whole
fleet, and a read waits about as long as the mirror takes to fetch the blob, which is what
reading its whole answer would take too. Measured through ``docker-registry`` 2.8 behind a
1 Gbit/s 20 ms link (``python -m benchmarks.run fleet``): see docs/fleets.md.

Per (endpoint, blob), until the endpoint has answered a range of the blob with 206, only one
request for the blob is in flight there (the probe) and the others wait for its status; a 206
opens the endpoint to concurrent range requests for that blob. A mirror that still answers
200 after ``warm_seconds`` (or any endpoint, with ``warm_seconds`` 0) has its next 200 kept: a
task of its own streams it into the spill area (``spill``) — it outlives the read that asked,
whose deadline may cut it — and every read of the blob by this client is served from there,
verified against the blob digest once complete: bytes the stream has passed at once, later
ones when it gets there. A stream that breaks (the mirror stopped) goes on where it broke at
the next endpoint (the origin) with an open-ended range, so no read fails and no byte comes
twice; an endpoint that cannot be reached is tried last for a while.

While a mirror fetches the blob, or while a whole blob streams, a read waits rather than
asking the next endpoint: the origin pays for the mirror's copy anyway, so any range asked of
it meanwhile is paid twice. The exception is a small range — a layer's footer and TOC, which a
mount needs before anything else, sit at the blob's end — which is asked of the next endpoint,
within ``BYPASS_SHARE`` of the blob: a mount does not wait for its whole blob, and the origin
pays at most that much more.

Bytes of a partial read cannot be checked against the blob digest; the reader checks them
against the chunk digests of the eStargz TOC before they are used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx
import trio

from lazy2dfs import metrics
from lazy2dfs.digest import Verifier
from lazy2dfs.errors import Lazy2dfsError
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.auth import pull_scope
from lazy2dfs.registry_client.errors import (
    BlobNotFoundError,
    RangeError,
    RegistryProtocolError,
    RegistryUnavailableError,
    UnauthorizedError,
)
from lazy2dfs.registry_client.hosts import Endpoint
from lazy2dfs.registry_client.ranges import (
    ByteRange,
    Part,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    slice_parts,
)
from lazy2dfs.registry_client.retry import RetryPolicy
from lazy2dfs.registry_client.spill import SpillArea, SpilledBlob
from lazy2dfs.registry_client.transport import Transport, read_at_most

log = get_logger(__name__)

# Single-range requests in flight at once when a registry refuses multi-range requests.
SINGLE_RANGE_CONCURRENCY: Final = 4
# Multi-range refusals: some registries say 400, others 416 for the whole set.
_MULTI_RANGE_REFUSED: Final = frozenset({400, 416})
_EXPIRED: Final = frozenset({401, 403})
# What a multipart answer may hold beyond its ranges: a boundary line and headers per part.
MULTIPART_OVERHEAD_PER_PART: Final = 1024
# A range that starts this far beyond a whole-blob stream's position may be asked of the next
# endpoint, within BYPASS_SHARE of the blob's size per stream (see the module's docstring).
FAR_AHEAD: Final = 1024 * 1024
BYPASS_SHARE: Final = 0.02
# Bytes of a whole-blob stream written to its spill file at once.
SPILL_WRITE: Final = 1024 * 1024
# An endpoint that could not be reached is tried after the others for this long.
DOWN_SECONDS: Final = 30.0
# How fast a mirror is taken to fetch a blob from its origin until it has fetched one (bytes
# per second: 1 Gbit/s), and the bounds of the time between two requests while it does (see
# ``BlobReader._warm``).
WARM_RATE: Final = 125e6
# How fast a mirror writes what it fetched to its storage before it serves it (docker-registry
# 2.8 writes and syncs the file: about a second for 4 x 51 MiB on this project's machine).
WARM_STORE_RATE: Final = 200e6
# What a mirror spends on a blob besides its bytes once it answers the first request (by then
# its store has its first bytes too): TCP's slow start, its store's commit. Through the
# emulated 1 Gbit/s, 20 ms link a 54 MiB blob was held 0.7-0.9 s after an idle mirror's
# answer (0.13 s after the request), about what its bytes explain; a mirror busy with eight
# nodes answered after 0.7 s and held it 0.6-0.8 s later.
WARM_LATENCY: Final = 0.3
# Blobs from this size up are left to a mirror to fetch; below it, what the origin sends of
# a whole answer closed (~2 MB by its access log through the emulated link of
# devstack/link.py) would cost about as much as reading it. At 16 MiB, a model of 10 MB rows
# cost the origin 2.0x a changed row for one node; at 4 MiB 1.22x (1.02x on the link), each
# blob's wait ~0.2 s longer than streaming it.
WARM_MIN_BYTES: Final = 4 * 1024 * 1024
WARM_FIRST_DELAY: Final = 0.05
WARM_MAX_DELAY: Final = 2.0
# How long reads wait for a mirror to hold a blob, unless the client is told otherwise (the
# daemon passes registry.mirror_warm_seconds).
WARM_SECONDS: Final = 30.0


class _MultiRangeRefused(Exception):
    pass


class _WholeAnswer(Exception):
    """An endpoint answered with the whole blob where only a range would do: a read that
    bypasses a whole blob already streaming from elsewhere."""


@dataclass
class _Route:
    """How one endpoint answers range requests for one blob."""

    ranges: bool = False  # it answered one with 206: requests may go there concurrently
    probing: bool = False  # the first request is under way; others wait for its status
    warming: bool = False  # a task waits for the mirror to hold the blob (``_warm``)
    warmed: bool = False  # that wait is over, with or without ranges
    bypassed: int = 0  # bytes read from the next endpoint meanwhile
    changed: trio.Event = field(default_factory=trio.Event)

    def settle(self) -> None:
        self.probing = False
        changed, self.changed = self.changed, trio.Event()
        changed.set()


@dataclass
class _Handoff:
    """What a probe running in a task of its own tells the read that started it."""

    route: _Route
    error: Exception | None
    parts: list[bytes] = field(default_factory=list)
    blob: SpilledBlob | None = None
    ready: trio.Event = field(default_factory=trio.Event)

    def arrive(self) -> None:
        if not self.ready.is_set():
            self.ready.set()
            self.route.settle()


class MirrorFetches:
    """When each mirror will hold the blobs it fetches from its origin for this client.

    A mirror fetches the blobs it was set fetching at once, sharing its link, so a blob is
    expected after the bytes of every blob it fetches meanwhile (each counted up to this
    blob's size) at the rate it fetched the last one (``WARM_RATE`` until then)."""

    def __init__(self) -> None:
        self._rates: dict[str, float] = {}
        self._fetching: dict[str, dict[str, int]] = {}

    def start(self, host: str, digest: str, size: int) -> None:
        self._fetching.setdefault(host, {})[digest] = size

    def stop(self, host: str, digest: str) -> None:
        self._fetching.get(host, {}).pop(digest, None)

    def work(self, host: str, size: int) -> int:
        """Bytes ``host`` fetches before it holds a ``size``-byte blob it fetches now."""
        return sum(min(other, size) for other in self._fetching.get(host, {}).values())

    def expected(self, host: str, size: int) -> float:
        """Seconds until ``host`` holds a ``size``-byte blob from its answer to the first
        request for it: its fetch, then its store's write (a request meanwhile costs the
        origin a copy at the link's full speed)."""
        work = self.work(host, size)
        return WARM_LATENCY + work / self._rates.get(host, WARM_RATE) + work / WARM_STORE_RATE

    def done(self, host: str, work: int, not_yet: float, held: float, first_try: bool) -> None:
        """``host`` was found holding a blob ``held`` seconds after it answered the first
        request for it (and began fetching it), with ``work`` bytes to fetch, and not holding
        it at ``not_yet``; ``first_try``: at the first request after that, when it was
        expected.

        Found late, it took about halfway between the two: expect that rate from now on.
        Found on time says only that it was no slower than expected, so the rate goes back
        toward ``WARM_RATE`` and never above: a request made too early costs the origin
        what was in flight of one more copy, one made late costs a read a fraction of the
        wait. Blobs fetched together are found together; each raising the rate would
        compound (after a rollout of four compounded to 5x, the update's blob was asked for
        twice before the mirror held it)."""
        rate = self._rates.get(host, WARM_RATE)
        if first_try:
            rate = min(rate * 1.5, WARM_RATE)
        else:
            took = (not_yet + held) / 2 - WARM_LATENCY - work / WARM_STORE_RATE
            rate = min(work / max(took, WARM_FIRST_DELAY), WARM_RATE)
        self._rates[host] = rate


class BlobRoutes:
    """What one client learned, shared by all its readers: how each endpoint answers ranges
    of each blob, which endpoints are down, and the whole blobs kept on disk (``spill``;
    None keeps none, e.g. a one-shot CLI call). ``warm_seconds``: how long reads of a blob
    wait for a mirror to serve ranges of it before its whole answer is taken (0: at once)."""

    def __init__(self, spill: SpillArea | None = None, warm_seconds: float = WARM_SECONDS) -> None:
        self.spill = spill
        self.warm_seconds = warm_seconds
        self._routes: dict[tuple[str, str], _Route] = {}
        self._down_until: dict[str, float] = {}
        self.fetches = MirrorFetches()

    def route(self, host: str, digest: str) -> _Route:
        return self._routes.setdefault((host, digest), _Route())

    def spilled(self, digest: str) -> SpilledBlob | None:
        return None if self.spill is None else self.spill.find(digest)

    def ordered(self, targets: Sequence[tuple[Endpoint, str]]) -> list[tuple[Endpoint, str]]:
        """``targets`` with endpoints recently found down moved last."""
        return sorted(targets, key=lambda t: self.is_down(t[0].host))

    def is_down(self, host: str) -> bool:
        return self._down_until.get(host, 0.0) > trio.current_time()

    def down(self, host: str) -> None:
        self._down_until[host] = trio.current_time() + DOWN_SECONDS

    def up(self, host: str) -> None:
        self._down_until.pop(host, None)

    def release(self, digest: str) -> None:
        if self.spill is not None:
            self.spill.release(digest)


class BlobReader:
    """Reads byte ranges of one blob; satisfies ``lazy2dfs.remote.fetch.BlobSource``.

    ``targets`` are the (endpoint, blob URL) pairs able to serve the blob, in order; the first
    that answers is kept for later reads. ``routes`` is shared by the readers of one client.
    ``policy`` retries each read from the last target (default: the transport's); mirrors
    before it are retried with the transport's.
    """

    def __init__(
        self,
        transport: Transport,
        targets: Sequence[tuple[Endpoint, str]],
        repository: str,
        digest: str,
        size: int | None = None,
        routes: BlobRoutes | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not targets:
            raise BlobNotFoundError(f"{repository}@{digest}: no endpoint can pull")
        self._transport = transport
        self._policy = policy or transport.policy
        self._targets = list(targets)
        # Mirrors: endpoints with another after them, which may fetch the blob from it, the
        # last (hosts.toml's server).
        self._mirrors = {endpoint.host for endpoint, _ in targets[:-1]}
        self._server = targets[-1]
        self._scopes = (pull_scope(repository),)
        self._routes = routes or BlobRoutes()
        self.digest = digest
        self.size = size
        self._location: str | None = None  # pre-signed storage URL from the last redirect
        self._single_range = False

    async def read_range(self, offset: int, length: int) -> bytes:
        return (await self.read_ranges([(offset, length)]))[0]

    async def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each ``(offset, length)``, in the order asked."""
        wanted = list(ranges)
        for offset, length in wanted:
            if offset < 0 or length <= 0:
                raise RangeError(f"{self.digest}: invalid range {offset}+{length}")
            if self.size is not None and offset + length > self.size:
                raise RangeError(f"{self.digest}: range {offset}+{length} beyond {self.size}")
        spilled = self._routes.spilled(self.digest)
        if spilled is not None:
            served = await self._from_spill(spilled, wanted)
            if served is not None:
                return served
        return await self._from_endpoints(wanted)

    def release(self) -> None:
        """The caller needs no more bytes of this blob: a whole copy kept of it may go."""
        self._routes.release(self.digest)

    async def _from_endpoints(
        self, wanted: list[ByteRange], skip: str | None = None, whole_ok: bool = True
    ) -> list[bytes]:
        """From the first endpoint that serves the blob (but ``skip``); outages and 404s move
        on to the next."""
        failure: Exception | None = None
        for endpoint, url in self._routes.ordered(self._targets):
            if endpoint.host == skip:
                continue
            try:
                result = await self._from_endpoint(endpoint, url, wanted, whole_ok)
            except RegistryUnavailableError as err:
                if not self._routes.is_down(endpoint.host):
                    log.warning(
                        "registry endpoint unavailable, trying the next",
                        host=endpoint.host,
                        blob=self.digest,
                        reason=err,
                        action="check the mirror; meanwhile reads go to the next host in"
                        " hosts.toml",
                    )
                self._routes.down(endpoint.host)
                failure = err
                continue
            except BlobNotFoundError as err:
                failure = err
                continue
            self._routes.up(endpoint.host)
            if skip is None:  # a range asked around a whole-blob stream does not reorder
                self._targets.remove((endpoint, url))
                self._targets.insert(0, (endpoint, url))
            return result
        raise failure or RegistryUnavailableError(f"blob {self.digest}: no other endpoint")

    async def _from_endpoint(
        self, endpoint: Endpoint, url: str, wanted: list[ByteRange], whole_ok: bool
    ) -> list[bytes]:
        route = self._routes.route(endpoint.host, self.digest)
        while not route.ranges:
            if self._may_warm(endpoint, route):
                if not route.warming:
                    route.warming = True
                    trio.lowlevel.spawn_system_task(
                        self._warm, endpoint, url, route, name=f"warm {self.digest}"
                    )
                beside = await self._beside_warming(endpoint, route, wanted)
                if beside is not None:
                    return beside
                await self._settled(endpoint, route)
                continue
            spilled = self._routes.spilled(self.digest) if whole_ok else None
            if spilled is not None:
                served = await self._from_spill(spilled, wanted)
                if served is not None:
                    return served
            elif not route.probing:
                return await self._probe(endpoint, url, route, wanted, whole_ok)
            else:
                await self._settled(endpoint, route)
        return await self._ranges(endpoint, url, wanted, whole_ok)

    async def _settled(self, endpoint: Endpoint, route: _Route) -> None:
        """Waits for the request under way at ``endpoint`` (a probe, or a mirror's fetch) to
        settle ``route``; raises when it found the endpoint down."""
        await route.changed.wait()
        if self._routes.is_down(endpoint.host):
            raise RegistryUnavailableError(f"{endpoint.host} did not answer the probe")

    def _policy_for(self, endpoint: Endpoint) -> RetryPolicy:
        """A mirror is retried briefly (the transport's policy), then skipped for the next
        host; only the last host is retried as long as ``policy`` allows (a read's deadline),
        so that a mirror that went away costs reads a second, not the deadline."""
        return self._transport.policy if endpoint.host in self._mirrors else self._policy

    def _may_warm(self, endpoint: Endpoint, route: _Route) -> bool:
        return (
            endpoint.host in self._mirrors
            and self._routes.warm_seconds > 0
            and (self.size or 0) >= WARM_MIN_BYTES
            and not route.warmed
        )

    async def _warm(self, endpoint: Endpoint, url: str, route: _Route) -> None:
        """Runs as a system task, bounded by ``warm_seconds``: asks the mirror for one byte
        until it answers 206 (``route.ranges``), closing each 200 unread, then wakes the reads
        waiting on ``route``. A mirror found down is marked so; their reads go elsewhere.

        Each 200 closed costs the origin what was in flight, so the next request waits until
        the mirror is expected to hold the blob (``MirrorFetches``), or, once it is late, as
        long as was waited so far."""
        started = trio.current_time()
        size, fetches = self.size or 0, self._routes.fetches
        fetches.start(endpoint.host, self.digest, size)
        work = 0
        probes = 0
        # Expected times count from the mirror's first answer, when it began fetching: a busy
        # mirror answers late and fetches late alike. When the last request went, and when
        # the last one answered 200 went.
        answered = asked = not_yet = started
        try:
            while True:
                probes += 1
                asked = trio.current_time()
                held = await self._transport.policy.run(
                    f"blob {self.digest} from {endpoint.host}",
                    functools.partial(self._holds, endpoint, url),
                    endpoint.host,
                )
                if held:
                    route.ranges = True
                    break
                metrics.MIRROR_WHOLE_CLOSED.inc()
                if probes == 1:
                    answered = trio.current_time()
                not_yet = asked
                waited = trio.current_time() - started
                if waited >= self._routes.warm_seconds:
                    log.warning(
                        "mirror still answers ranges with whole blobs",
                        blob=self.digest,
                        host=endpoint.host,
                        waited=round(waited, 1),
                        action="the next whole answer is kept; raise registry.mirror_warm_seconds"
                        " if the mirror needs longer to fetch a blob from its origin",
                    )
                    break
                if probes == 1:
                    log.info(
                        "mirror fetches the blob, reads wait", blob=self.digest, host=endpoint.host
                    )
                # Blobs set fetching since count too; once it is late, back off.
                work = max(work, fetches.work(endpoint.host, size))
                fetching = trio.current_time() - answered
                delay = fetches.expected(endpoint.host, size) - fetching
                if delay < WARM_FIRST_DELAY:
                    delay = min(WARM_MAX_DELAY, max(WARM_FIRST_DELAY, fetching))
                await trio.sleep(min(delay, self._routes.warm_seconds - waited))
            waited = trio.current_time() - started
            outcome = "ranges" if route.ranges else "whole"
            log.info(
                "mirror wait ended",
                blob=self.digest,
                host=endpoint.host,
                outcome=outcome,
                waited=round(waited, 2),
                requests=probes,
            )
            if route.ranges and probes > 1:
                fetches.done(
                    endpoint.host,
                    work,
                    max(not_yet - answered, 0.0),
                    asked - answered,
                    first_try=probes == 2,
                )
            metrics.MIRROR_WARM.labels(outcome).observe(waited)
        except RegistryUnavailableError:
            self._routes.down(endpoint.host)
        except Exception as exc:  # the readers' own requests meet it again and report it
            if self._transport.closed:  # the client closed meanwhile: nobody waits
                return
            log.warning(
                "waiting for the mirror to fetch the blob failed",
                blob=self.digest,
                host=endpoint.host,
                reason=repr(exc),
                action="reads of the blob take the mirror's whole answer instead",
            )
        finally:
            fetches.stop(endpoint.host, self.digest)
            route.warming, route.warmed = False, True
            route.settle()

    async def _holds(self, endpoint: Endpoint, url: str) -> bool:
        """Whether ``endpoint`` holds the blob: it answers a one-byte range with 206, not 200
        and the whole blob (closed unread)."""
        async with self._transport.open(
            "GET",
            url,
            endpoint=endpoint,
            scopes=self._scopes,
            headers={"Range": "bytes=0-0"},
        ) as response:
            status = response.status_code
        if status == 206:
            return True
        if status == 200:
            return False
        if status == 404:
            raise BlobNotFoundError(f"blob {self.digest} not on {endpoint.host}")
        raise RegistryProtocolError(f"blob {self.digest}: unexpected HTTP {status}")

    async def _beside_warming(
        self, endpoint: Endpoint, route: _Route, wanted: list[ByteRange]
    ) -> list[bytes] | None:
        """``wanted`` from the server while mirror ``endpoint`` fetches the blob, if small
        enough for what is left of ``BYPASS_SHARE``; None when it must wait."""
        length = sum(n for _, n in wanted)
        if self.size is None or route.bypassed + length > self.size * BYPASS_SHARE:
            return None
        route.bypassed += length
        server, url = self._server
        try:
            return await self._from_endpoint(server, url, wanted, whole_ok=False)
        except (_WholeAnswer, Lazy2dfsError) as exc:
            log.debug("no range beside the warming mirror", blob=self.digest, reason=exc)
            return None

    async def _probe(
        self,
        endpoint: Endpoint,
        url: str,
        route: _Route,
        wanted: list[ByteRange],
        whole_ok: bool,
    ) -> list[bytes]:
        """The first request for the blob at ``endpoint``: one range, alone. Its answer says
        whether the endpoint serves ranges of the blob; a whole blob is kept if there is room."""
        route.probing = True
        if self._routes.spill is None or not whole_ok:
            try:
                head = await self._request(endpoint, url, wanted[:1], whole_ok, None)
            finally:
                route.settle()
        else:
            handoff = _Handoff(
                route, RegistryUnavailableError(f"blob {self.digest}: the request was cut")
            )
            trio.lowlevel.spawn_system_task(
                self._probe_task, endpoint, url, wanted[:1], handoff, name=f"probe {self.digest}"
            )
            await handoff.ready.wait()
            if handoff.blob is not None:
                served = await self._from_spill(handoff.blob, wanted)
                return served or await self._from_endpoint(endpoint, url, wanted, whole_ok)
            if handoff.error is not None:
                raise handoff.error
            head = handoff.parts
        rest = await self._from_endpoint(endpoint, url, wanted[1:], whole_ok) if wanted[1:] else []
        return head + rest

    async def _probe_task(
        self, endpoint: Endpoint, url: str, wanted: list[ByteRange], handoff: _Handoff
    ) -> None:
        """Runs as a system task: a whole-blob answer must outlive the read that asked for it
        (cut by its deadline, or a background fetch cancelled), or the next read would ask
        again and the mirror fetch the blob from the origin again."""
        try:
            handoff.parts = await self._request(endpoint, url, wanted, True, handoff)
            handoff.error = None
        except Exception as exc:  # handed to the read waiting for it
            handoff.error = exc
        finally:
            handoff.arrive()
        if handoff.blob is not None:
            await self._finish_spill(handoff.blob, endpoint, url)

    async def _finish_spill(self, blob: SpilledBlob, first: Endpoint, url: str) -> None:
        """Streams what a broken whole-blob answer did not bring, from the same endpoint and
        then the others, and checks the blob's digest."""
        area = self._routes.spill
        assert area is not None
        others = [t for t in self._routes.ordered(self._targets) if t[0] != first]
        try:
            failure: Exception | None = blob.failure
            for endpoint, target in [(first, url), *others]:
                if blob.failure is not None or blob.position == blob.size:
                    break
                try:
                    await self._policy_for(endpoint).run(
                        f"rest of blob {self.digest} from {endpoint.host}",
                        functools.partial(self._resume, endpoint, target, blob),
                        endpoint.host,
                    )
                except (RegistryUnavailableError, BlobNotFoundError) as exc:
                    self._routes.down(endpoint.host)
                    failure = exc
            if blob.failure is None:
                if blob.position != blob.size:
                    raise failure or RegistryUnavailableError(f"blob {self.digest} incomplete")
                blob.finish()
                metrics.WHOLE_BLOBS.labels("verified").inc()
                log.info("whole blob kept", blob=self.digest, size=blob.size)
        except Exception as exc:  # readers waiting on the spill ask registries instead
            blob.fail(exc)
        finally:
            if not blob.done:
                blob.fail(RegistryUnavailableError(f"blob {self.digest}: stream cut"))
            if blob.failure is not None:
                metrics.WHOLE_BLOBS.labels("failed").inc()
                if not blob.dropped:  # dropped: nobody needs it any more (or the client closed)
                    log.warning("whole blob not kept", blob=self.digest, reason=blob.failure)
            area.finished(blob)

    async def _resume(self, endpoint: Endpoint, url: str, blob: SpilledBlob) -> None:
        start = blob.position
        async with self._transport.open(
            "GET", url, endpoint=endpoint, scopes=self._scopes, headers={"Range": f"bytes={start}-"}
        ) as response:
            status = response.status_code
            if status == 404:
                raise BlobNotFoundError(f"blob {self.digest} not on {endpoint.host}")
            if status == 206:
                first, _, _ = parse_content_range(response.headers.get("content-range", ""))
                if first != start:
                    raise RegistryProtocolError(f"blob {self.digest}: asked {start}-, got {first}-")
                if start > 0:
                    metrics.WHOLE_BLOBS.labels("resumed").inc()
                    log.info("whole blob goes on", blob=self.digest, host=endpoint.host, at=start)
            elif status == 200:
                blob.restart()
            else:
                raise RegistryProtocolError(f"blob {self.digest}: unexpected HTTP {status}")
            await self._stream_into(response, blob)

    async def _stream_into(self, response: httpx.Response, blob: SpilledBlob) -> None:
        """Writes the body at the blob's position; what arrived before a break is kept."""
        pending: list[bytes] = []
        buffered = 0
        try:
            async for chunk in response.aiter_bytes():
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= SPILL_WRITE:
                    await blob.append(b"".join(pending))
                    pending, buffered = [], 0
        except httpx.TransportError:
            if pending:
                await blob.append(b"".join(pending))
            raise
        if pending:
            await blob.append(b"".join(pending))

    async def _from_spill(self, blob: SpilledBlob, wanted: list[ByteRange]) -> list[bytes] | None:
        """``wanted`` from a whole blob on disk, waiting for the stream where it is behind;
        None when the spill failed or went (the caller asks registries instead)."""
        for offset, length in wanted:
            if offset + length > blob.size:
                raise RangeError(f"{self.digest}: range {offset}+{length} beyond {blob.size}")
        results: dict[int, bytes] = {}
        if not blob.complete:
            budget = int(blob.size * BYPASS_SHARE) - blob.bypassed
            bypass = []
            for index, (offset, length) in enumerate(wanted):
                if offset > blob.available + FAR_AHEAD and length <= budget:
                    bypass.append(index)
                    budget -= length
            if bypass:
                blob.bypassed += sum(wanted[i][1] for i in bypass)
                try:
                    got = await self._from_endpoints(
                        [wanted[i] for i in bypass], skip=blob.host, whole_ok=False
                    )
                    results.update(zip(bypass, got, strict=True))
                except (_WholeAnswer, Lazy2dfsError) as exc:
                    log.debug("no range beside the whole blob", blob=self.digest, reason=exc)
        for index, (offset, length) in enumerate(wanted):
            if index in results:
                continue
            if not await blob.wait_for(offset + length):
                return None
            data = await blob.read(offset, length)
            if data is None:
                return None
            results[index] = data
        return [results[i] for i in range(len(wanted))]

    async def _ranges(
        self, endpoint: Endpoint, url: str, wanted: list[ByteRange], whole_ok: bool
    ) -> list[bytes]:
        if len(wanted) == 1:
            return await self._request(endpoint, url, wanted, whole_ok, None)
        if not self._single_range:
            try:
                return await self._request(endpoint, url, wanted, whole_ok, None)
            except _MultiRangeRefused:
                self._single_range = True
                log.info("registry refuses multi-range requests", blob=self.digest)
        return await self._one_by_one(endpoint, url, wanted, whole_ok)

    async def _one_by_one(
        self, endpoint: Endpoint, url: str, wanted: list[ByteRange], whole_ok: bool
    ) -> list[bytes]:
        """Single-range requests, a few at a time; the first failure is raised as itself."""
        results: list[bytes] = [b""] * len(wanted)
        failures: list[Exception] = []
        limiter = trio.CapacityLimiter(SINGLE_RANGE_CONCURRENCY)

        async def one(index: int, byte_range: ByteRange) -> None:
            async with limiter:
                if failures:
                    return
                try:
                    results[index] = (
                        await self._request(endpoint, url, [byte_range], whole_ok, None)
                    )[0]
                except Exception as err:  # re-raised below, outside the nursery
                    failures.append(err)

        async with trio.open_nursery() as nursery:
            for index, byte_range in enumerate(wanted):
                nursery.start_soon(one, index, byte_range)
        if failures:
            raise failures[0]
        return results

    async def _request(
        self,
        endpoint: Endpoint,
        url: str,
        ranges: list[ByteRange],
        whole_ok: bool,
        handoff: _Handoff | None,
    ) -> list[bytes]:
        return await self._policy_for(endpoint).run(
            f"blob {self.digest} from {endpoint.host}",
            functools.partial(self._attempt, endpoint, url, ranges, whole_ok, handoff),
            endpoint.host,
        )

    async def _attempt(
        self,
        endpoint: Endpoint,
        url: str,
        ranges: list[ByteRange],
        whole_ok: bool,
        handoff: _Handoff | None,
    ) -> list[bytes]:
        headers = {"Range": range_header(ranges)}
        if self._location is not None:
            async with self._transport.open(
                "GET", self._location, endpoint=None, headers=headers
            ) as response:
                if response.status_code not in _EXPIRED:
                    return await self._answer(response, endpoint, ranges, whole_ok, handoff)
            log.info("blob URL expired, asking the registry again", blob=self.digest)
            self._location = None
        async with self._transport.open(
            "GET", url, endpoint=endpoint, scopes=self._scopes, headers=headers
        ) as response:
            if str(response.url) != url:
                self._location = str(response.url)
            return await self._answer(response, endpoint, ranges, whole_ok, handoff)

    async def _answer(
        self,
        response: httpx.Response,
        endpoint: Endpoint,
        ranges: list[ByteRange],
        whole_ok: bool,
        handoff: _Handoff | None,
    ) -> list[bytes]:
        status = response.status_code
        if status == 206:
            parts = await self._parts(response, ranges)
            self._routes.route(endpoint.host, self.digest).ranges = True
            return slice_parts(parts, ranges)
        if status == 200:
            if not whole_ok:
                raise _WholeAnswer
            if handoff is not None and (blob := self._start_spill(response, endpoint)):
                handoff.blob = blob
                handoff.arrive()
                try:
                    await self._stream_into(response, blob)
                except httpx.TransportError as exc:
                    log.info("whole blob stream broke", blob=self.digest, reason=repr(exc))
                except Exception as exc:  # the spill is what failed; its readers move on
                    blob.fail(exc)
                return []
            return await self._from_whole_blob(response, ranges)
        if status == 404:
            raise BlobNotFoundError(f"blob {self.digest} not found")
        if status in _MULTI_RANGE_REFUSED and len(ranges) > 1:
            raise _MultiRangeRefused
        if status == 416:
            raise RangeError(f"{self.digest}: registry says {range_header(ranges)} unsatisfiable")
        if status in _EXPIRED:
            raise UnauthorizedError(f"blob {self.digest}: HTTP {status}")
        raise RegistryProtocolError(f"blob {self.digest}: unexpected HTTP {status}")

    def _start_spill(self, response: httpx.Response, endpoint: Endpoint) -> SpilledBlob | None:
        assert self._routes.spill is not None
        declared = response.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else self.size
        if size is None:
            return None
        if self.size is not None and size != self.size:
            raise RegistryProtocolError(f"blob {self.digest}: {size} bytes, not {self.size}")
        blob = self._routes.spill.start(self.digest, size, endpoint.host)
        if blob is None:
            metrics.WHOLE_BLOBS.labels("not_kept").inc()
        log.info(
            "registry sent the whole blob for a range",
            blob=self.digest,
            host=endpoint.host,
            size=size,
            kept=blob is not None,
        )
        return blob

    async def _parts(self, response: httpx.Response, ranges: list[ByteRange]) -> list[Part]:
        """The parts of a 206, read no further than the ranges asked for (a server may merge
        neighbouring ranges into one part, so the extent from first to last byte, plus
        multipart headers)."""
        extent = max(o + n for o, n in ranges) - min(o for o, _ in ranges)
        limit = extent + MULTIPART_OVERHEAD_PER_PART * (len(ranges) + 1)
        body = await read_at_most(response, limit, f"blob {self.digest} {range_header(ranges)}")
        content_type = response.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/byteranges"):
            return parse_multipart_byteranges(body, content_type)
        first, last, total = parse_content_range(response.headers.get("content-range", ""))
        if len(body) != last - first + 1:
            raise RegistryProtocolError(
                f"blob {self.digest}: {len(body)} bytes for Content-Range {first}-{last}"
            )
        if self.size is None and total is not None:
            self.size = total
        return [Part(first, body)]

    async def _from_whole_blob(
        self, response: httpx.Response, ranges: list[ByteRange]
    ) -> list[bytes]:
        """Streams the whole blob, verifying it, and keeps only the span the ranges need."""
        low = min(offset for offset, _ in ranges)
        high = max(offset + length for offset, length in ranges)
        kept = bytearray()
        verifier = Verifier(self.digest)
        async for chunk in response.aiter_bytes():
            position = verifier.size
            verifier.update(chunk)
            if self.size is not None and verifier.size > self.size:
                raise RegistryProtocolError(f"blob {self.digest}: more than {self.size} bytes")
            start, stop = max(low, position), min(high, position + len(chunk))
            if start < stop:
                kept += chunk[start - position : stop - position]
        verifier.verify(f"blob {self.digest}")
        self.size = verifier.size
        return slice_parts([Part(low, bytes(kept))], ranges)
