"""The daemon's HTTP face: ``/metrics`` (Prometheus text format), ``/healthz`` (for probes)
and ``/status`` (JSON, read by ``lazy2dfs status``), on ``metrics_address`` when one is set, and
always on the control socket (``Config.control_address``, root only), which also answers
``/registry`` (how the daemon reaches a registry, and whether it can fetch a given manifest
there) and ``/pull`` (``lazy2dfs pull``, done by the daemon: ``containerd.pull_service``).

The metrics every part counts are declared in ``lazy2dfs.metrics``; what is read at scrape
time (snapshots by kind, each mounted layer's bytes, the cache's size) is collected here, and
this is the one place that builds the status document.

Each listener serves up to ``MAX_CONNECTIONS`` connections at once, on a fixed pool of threads
(the snapshot store gives each thread its own sqlite connection for the daemon's lifetime, so a
thread per request would leak a connection per scrape); one more is answered 503 at once, so a
flood costs neither threads nor memory. A client has ``CLIENT_TIMEOUT`` in all to send its
request, and as long again to take the reply: one that sends a byte a second is cut off, as a
timeout on each read alone would not do. A ``/pull`` reply is a stream as long as the pull:
each of its writes must get through within ``CLIENT_TIMEOUT`` instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import socketserver
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, cast
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

import trio
from prometheus_client import REGISTRY, Counter, disable_created_metrics, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lazy2dfs import __version__, metrics
from lazy2dfs.cache.store import CacheStore
from lazy2dfs.config import Config
from lazy2dfs.containerd.pull_service import PullService
from lazy2dfs.errors import InvalidArgumentError, Lazy2dfsError, UnavailableError
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.layers.mounted import EstargzLayers
from lazy2dfs.logfmt import get_logger
from lazy2dfs.mountinfo import is_mounted
from lazy2dfs.registry_client import (
    Capability,
    RegistryClient,
    UnauthorizedError,
    parse_reference,
)
from lazy2dfs.snapshotter.overlay import OverlaySnapshotter
from lazy2dfs.snapshotter.snapshot import Kind
from lazy2dfs.status import (
    CacheStatus,
    FallbackStatus,
    LayerStatus,
    RegistryAnswer,
    RegistryFailure,
    StatusReport,
)

log = get_logger(__name__)

# A FUSE loop that does not run a no-op within this long is not serving reads either.
LOOP_TIMEOUT = 2.0
# A client's time to send its whole request, and again to take the whole reply.
CLIENT_TIMEOUT = 5.0
# Connections one listener serves at once; the next is answered 503 and closed.
MAX_CONNECTIONS = 16
BUSY_REPLY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 5\r\n\r\nbusy\n"
)
# Where the request handler leaves its socket, for the deadline of the reply.
CONNECTION_KEY = "lazy2dfs.connection"
# The manifest fetch /registry makes, as a lazy layer's resolve would (retries included).
PROBE_TIMEOUT = 30.0
# A /pull request's body: a reference and a few paths.
MAX_PULL_REQUEST = 64 * 1024


class Streamed:
    """A reply sent as it is made (``/pull``'s events), not built whole first."""

    def __init__(self, chunks: Generator[bytes, None, None]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """wsgiref calls it when the reply ends or its client is gone."""
        self._chunks.close()


def config_digest(config: Config) -> str:
    """Tells whether two daemons run the same configuration (it holds no credentials)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DaemonParts:
    """What the endpoints look at; owned and closed by the daemon."""

    config: Config
    session: FuseSession
    layers: EstargzLayers
    cache: CacheStore
    snapshotter: OverlaySnapshotter
    registry: RegistryClient


class _LoopProbe:
    """Asks the FUSE loop to run a no-op, waiting at most ``LOOP_TIMEOUT``. At most one probe
    is in flight: concurrent requests wait for the same one, and while one older than
    ``LOOP_TIMEOUT`` is unanswered the loop counts as stuck, so a stuck loop does not pile up
    probe threads."""

    def __init__(self, session: FuseSession) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._answered: threading.Event | None = None
        self._sent = 0.0

    def answers(self) -> bool:
        with self._lock:
            answered, now = self._answered, time.monotonic()
            if answered is None or answered.is_set():
                answered = self._answered = threading.Event()
                self._sent = now
                threading.Thread(
                    target=self._ping, args=(answered,), name="fuse-probe", daemon=True
                ).start()
            left = self._sent + LOOP_TIMEOUT - now
        return answered.wait(left) if left > 0 else False

    def _ping(self, answered: threading.Event) -> None:
        try:
            self._session.call_sync(answered.set)
        except Exception as exc:  # the loop ended: the probe stays unanswered
            log.debug("FUSE loop probe failed", error=repr(exc))


class _Deadlines:
    """Cuts off connections whose client takes too long: a timeout on each read would let a
    client that sends one byte a second hold a thread for ever. One thread for a listener."""

    def __init__(self, name: str) -> None:
        self._changed = threading.Condition()
        self._due: dict[socket.socket, float] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-deadlines", daemon=True)
        self._thread.start()

    def arm(self, connection: socket.socket, seconds: float) -> None:
        with self._changed:
            self._due[connection] = time.monotonic() + seconds
            self._changed.notify()

    def disarm(self, connection: socket.socket) -> None:
        """Before the connection is closed: its descriptor may then be reused."""
        with self._changed:
            self._due.pop(connection, None)

    def close(self) -> None:
        """Cuts off every armed connection and ends the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for connection, due in list(self._due.items()):
                    if due <= now or self._closed:
                        del self._due[connection]
                        with suppress(OSError):  # the client may have gone already
                            connection.shutdown(socket.SHUT_RDWR)
                if self._closed:
                    return
                self._changed.wait(min(self._due.values(), default=now + 60.0) - now)


class _BoundedServer(WSGIServer):
    """wsgiref's server, serving up to ``MAX_CONNECTIONS`` connections at once on a fixed pool
    of threads, each client within ``CLIENT_TIMEOUT``."""

    # Connections waiting to be accepted: a burst beyond it would wait for SYN retries.
    request_queue_size = 64

    def __init__(self, address: Any, handler: type[WSGIRequestHandler], name: str) -> None:
        # Before binding, which calls ``server_close`` when it fails.
        self.name = name
        self.deadlines = _Deadlines(name)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._pool = ThreadPoolExecutor(MAX_CONNECTIONS, thread_name_prefix=name)
        super().__init__(address, handler)

    def set_app(
        self, application: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]] | None
    ) -> None:
        if application is None:
            super().set_app(None)
            return

        def replying(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            connection: socket.socket = environ[CONNECTION_KEY]
            reply = application(environ, start_response)
            if isinstance(reply, Streamed):
                self.deadlines.disarm(connection)
                connection.settimeout(CLIENT_TIMEOUT)
                return reply
            # The whole reply is built before the client's clock runs again: only the time it
            # takes to read it counts against the client.
            body = list(reply)
            self.deadlines.arm(connection, CLIENT_TIMEOUT)
            return body

        super().set_app(replying)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            metrics.HTTP_REFUSED.labels(self.name).inc()
            with suppress(OSError):  # a fresh socket's buffer takes it without blocking
                request.setblocking(False)
                request.send(BUSY_REPLY)
            self.shutdown_request(request)
            return
        self.deadlines.arm(request, CLIENT_TIMEOUT)
        self._pool.submit(self._serve_connection, request, client_address)

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:  # a client cut off or gone: nothing to answer
            log.debug("HTTP connection failed", listener=self.name, error=repr(exc))
        finally:
            self.deadlines.disarm(request)
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.close()
        self._pool.shutdown(wait=True)


class _Server(_BoundedServer):
    """On IPv4 or IPv6, without a reverse DNS lookup of its address at start
    (``HTTPServer.server_bind`` calls ``getfqdn``, which can hang where DNS is unreachable)."""

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler, "observability")

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()


class _ControlServer(_BoundedServer):
    """On a unix socket: no host name or port to look up, and a fixed peer address (the
    kernel gives none for unix sockets, and wsgiref wants one)."""

    address_family = socket.AF_UNIX

    def __init__(self, path: str, handler: type[WSGIRequestHandler]) -> None:
        super().__init__(path, handler, "control")

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = 0
        self.setup_environ()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, _ = self.socket.accept()
        return connection, ("local", 0)


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT

    def get_environ(self) -> WSGIEnvironment:
        """Called once the request is read: the client's clock stops while the reply is
        built."""
        server = cast(_BoundedServer, self.server)
        server.deadlines.disarm(self.connection)
        environ = super().get_environ()
        environ[CONNECTION_KEY] = self.connection
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        """Not logged: a scrape every few seconds would drown the daemon's own events."""


class DaemonCollector(Collector):
    """State read at scrape time: snapshots by kind, mounted remote layers and what each has
    fetched and served, and the chunk cache's size.

    Two snapshots of one layer digest in one image (a layer repeated in an image) share their
    series: their numbers are added, so no scrape ever holds a duplicate series."""

    def __init__(
        self,
        layers: Callable[[], list[LayerStatus]],
        cache: CacheStore,
        snapshots_by_kind: Callable[[], Mapping[Kind, int]],
    ) -> None:
        self._layers = layers
        self._cache = cache
        self._snapshots_by_kind = snapshots_by_kind

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so that registering does not read the store."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families(with_samples=True)

    def _families(self, with_samples: bool = False) -> Iterator[Metric]:
        layer_labels = ["layer", "image"]
        snapshots = GaugeMetricFamily(
            "lazy2dfs_snapshots", "Snapshots in the store, by kind.", labels=["kind"]
        )
        remote = GaugeMetricFamily(
            "lazy2dfs_remote_layers", "Remote layers mounted in the FUSE filesystem."
        )
        size = GaugeMetricFamily(
            "lazy2dfs_layer_size_bytes", "Compressed size of a mounted layer.", labels=layer_labels
        )
        fetched = CounterMetricFamily(
            "lazy2dfs_layer_fetched_bytes",
            "Bytes of a mounted layer's blob fetched from the registry since it was mounted"
            " (TOC and chunks; a chunk fetched for another layer is not fetched again).",
            labels=layer_labels,
        )
        served = CounterMetricFamily(
            "lazy2dfs_layer_served_bytes",
            "File bytes of a mounted layer served to readers.",
            labels=layer_labels,
        )
        prefetched = CounterMetricFamily(
            "lazy2dfs_layer_prefetched_bytes",
            "Bytes of a mounted layer fetched in the background, no reader waiting.",
            labels=layer_labels,
        )
        ratio = GaugeMetricFamily(
            "lazy2dfs_layer_fetch_ratio",
            "Fetched bytes over the layer's size, at most 1 (approximate: a re-fetch after an"
            " eviction counts twice, a chunk shared with another layer not at all).",
            labels=layer_labels,
        )
        cache_bytes = GaugeMetricFamily(
            "lazy2dfs_cache_bytes",
            "Bytes of layers in the disk cache (file contents and tar headers).",
        )
        cache_limit = GaugeMetricFamily(
            "lazy2dfs_cache_limit_bytes", "The disk cache's bound (cache.max_bytes)."
        )
        cache_layers = GaugeMetricFamily(
            "lazy2dfs_cache_layers", "Blobs (layers) in the disk cache, in use or not."
        )
        if with_samples:
            try:
                counts = self._snapshots_by_kind()
            except sqlite3.Error:
                counts = None  # /healthz says why; the other metrics still help
            if counts is not None:
                for kind in (Kind.ACTIVE, Kind.COMMITTED, Kind.VIEW):
                    snapshots.add_metric([kind.filter_name], counts.get(kind, 0))
            totals: dict[tuple[str, str], list[int]] = {}
            layers = self._layers()
            for layer in layers:
                total = totals.setdefault((layer["layer"], layer["image"]), [0, 0, 0, 0])
                total[0] += layer["size"]
                total[1] += layer["fetched"]
                total[2] += layer["served"]
                total[3] += layer["prefetched"]
            remote.add_metric([], len(layers))
            for (digest, image), (s, f, v, p) in sorted(totals.items()):
                size.add_metric([digest, image], s)
                fetched.add_metric([digest, image], f)
                served.add_metric([digest, image], v)
                prefetched.add_metric([digest, image], p)
                ratio.add_metric([digest, image], min(1.0, f / s) if s else 1.0)
            cache_bytes.add_metric([], self._cache.size_bytes)
            cache_limit.add_metric([], self._cache.max_bytes)
            cache_layers.add_metric([], self._cache.blobs)
        yield from (snapshots, remote, size, fetched, served, prefetched, ratio)
        yield from (cache_bytes, cache_limit, cache_layers)


class Observability:
    """Serves the endpoints from ``start`` to ``stop``: on the control socket always, on
    ``config.metrics_address`` when set."""

    def __init__(self, parts: DaemonParts) -> None:
        self._parts = parts
        self._started = time.monotonic()
        self._digest = config_digest(parts.config)
        self._probe = _LoopProbe(parts.session)
        self._names = parts.config.metrics_image_names
        self._collector = DaemonCollector(
            functools.partial(self._layers, self._names),
            parts.cache,
            parts.snapshotter.count_by_kind,
        )
        self._metrics_app = make_wsgi_app()
        self._servers: list[tuple[_BoundedServer, threading.Thread]] = []
        self._registered = False
        self._pulls = PullService(
            self, parts.config.registry, parts.registry.credentials, parts.layers.open_ahead
        )

    def start(self) -> Observability:
        # ``*_created`` series double what Prometheus stores and nobody graphs them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        metrics.DAEMON.info({"version": __version__, "config_digest": self._digest})
        REGISTRY.register(self._collector)
        self._registered = True
        try:
            self._serve(self._bind_control(), self._control_app)
            address = self._parts.config.metrics_host_port
            if address is not None:
                self._serve(self._bind_metrics(*address), self._app)
        except BaseException:
            self.stop()
            raise
        return self

    def _bind_control(self) -> _BoundedServer:
        """Bound under a temporary name and renamed into place once it is root's alone, so
        that nobody else ever connects to it."""
        path = self._parts.config.control_address
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        try:
            server = _ControlServer(str(staging), _QuietHandler)
        except OSError as exc:
            raise UnavailableError(
                f"cannot serve the control socket {path}: {exc.strerror}"
                " (check the directory of --address)"
            ) from exc
        os.chmod(staging, 0o600)
        os.replace(staging, path)
        return server

    def _bind_metrics(self, host: str, port: int) -> _BoundedServer:
        try:
            return _Server((host, port), _QuietHandler)
        except OSError as exc:
            raise UnavailableError(
                f"cannot serve metrics on {self._parts.config.metrics_address}: {exc.strerror}"
                " (change metrics_address or --metrics-address)"
            ) from exc

    def _serve(
        self,
        server: _BoundedServer,
        app: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]],
    ) -> None:
        server.set_app(app)
        thread = threading.Thread(target=server.serve_forever, name=server.name, daemon=True)
        thread.start()
        self._servers.append((server, thread))

    def stop(self) -> None:
        self._parts.config.control_address.unlink(missing_ok=True)
        self._pulls.close()
        for server, thread in self._servers:
            server.shutdown()
            thread.join()
            server.server_close()
        self._servers.clear()
        if self._registered:
            REGISTRY.unregister(self._collector)
            self._registered = False

    def health(self, names: bool = True) -> tuple[bool, str]:
        """``(True, "ok")``; ``(True, "degraded: …")`` while a registry fails (restarting the
        daemon would not help, so probes should not); or False and the first problem of the
        daemon itself. Without ``names``, not the registry's error, which may quote an image
        reference."""
        parts = self._parts
        if not parts.config.address.is_socket():
            return False, f"gRPC socket {parts.config.address} is missing"
        if not parts.session.running:
            return False, "FUSE loop is not running"
        if not is_mounted(parts.session.mountpoint):
            return False, f"FUSE mount {parts.session.mountpoint} is gone"
        if not self._probe.answers():
            return False, f"FUSE loop did not answer within {LOOP_TIMEOUT}s"
        try:
            parts.snapshotter.count_by_kind()
        except sqlite3.Error as exc:
            return False, f"snapshot store does not answer: {exc}"
        failing = [r for r in metrics.REGISTRY_HEALTH.items() if r.failing_since]
        if failing:
            first = failing[0]
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first.failing_since))
            others = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
            return True, (
                f"degraded: registry {first.host} failing since {since}{others},"
                f" {first.failures} failed attempts"
                + (f"; last: {first.last_error}" if names else "")
            )
        return True, "ok"

    def status(self, names: bool = True) -> StatusReport:
        """Without ``names`` (``metrics_image_names = false``, on the metrics address), no
        image reference and no free text that could quote one: layers and fallbacks are named
        by layer digest, registries by host."""
        parts = self._parts
        healthy, health = self.health(names)
        try:
            counts = parts.snapshotter.count_by_kind()
            kinds = {
                k.filter_name: counts.get(k, 0) for k in (Kind.ACTIVE, Kind.COMMITTED, Kind.VIEW)
            }
        except sqlite3.Error:
            kinds = {}
        return StatusReport(
            version=__version__,
            pid=os.getpid(),
            uptime_seconds=time.monotonic() - self._started,
            config_digest=self._digest,
            healthy=healthy,
            health=health,
            snapshots=kinds,
            cache=CacheStatus(
                bytes=parts.cache.size_bytes,
                limit_bytes=parts.cache.max_bytes,
                layers=parts.cache.blobs,
            ),
            layers=self._layers(names),
            fallbacks=FallbackStatus(
                by_reason=_by_reason(metrics.FALLBACKS),
                plain=_by_reason(metrics.PLAIN_LAYERS),
                recent=[
                    (f if names else replace(f, image="", detail="")).to_json()
                    for f in metrics.RECENT_FALLBACKS.items()
                ],
            ),
            registries=[
                RegistryFailure(
                    host=r.host,
                    failures=r.failures,
                    failing_since=r.failing_since,
                    last_failure=r.last_failure,
                    last_error=r.last_error if names else "",
                )
                for r in metrics.REGISTRY_HEALTH.items()
            ],
        )

    def registry(self, registry: str, reference: str = "") -> RegistryAnswer:
        """How this daemon reaches ``registry``, and, given a ``reference`` there, whether it
        can fetch its manifest, as resolving one of its layers would."""
        client = self._parts.registry
        endpoints = [
            e.base_url
            for e in client.hosts.endpoints(registry)
            if Capability.PULL in e.capabilities
        ]
        source = client.hosts.source(registry)
        hosts_file = source / "hosts.toml" if source is not None else None
        docker_config = client.credentials.docker_config
        fetched, error, unauthorized = False, "", False
        if reference:
            ref = parse_reference(reference)
            if ref.registry != registry:
                raise InvalidArgumentError(f"{reference} is not in registry {registry}")
            try:
                self._parts.session.call(self._fetch_manifest, reference)
                fetched = True
            except Lazy2dfsError as exc:
                error, unauthorized = str(exc), isinstance(exc, UnauthorizedError)
            except trio.TooSlowError:
                error = f"{registry} did not serve the manifest within {PROBE_TIMEOUT:g}s"
        return RegistryAnswer(
            registry=registry,
            endpoints=endpoints,
            hosts_dir=str(client.hosts.hosts_dir or ""),
            hosts_source=str(hosts_file if hosts_file and hosts_file.is_file() else source or ""),
            plain_http=list(self._parts.config.registry.plain_http),
            credentials=client.credentials.lookup(registry) is not None,
            docker_config=str(docker_config or ""),
            fetched=fetched,
            error=error,
            unauthorized=unauthorized,
        )

    async def _fetch_manifest(self, reference: str) -> None:
        """With a client of its own, set up as the daemon's, closed afterwards: a probe leaves
        no keep-alive connection behind in the daemon's pool."""
        settings = self._parts.config.registry
        async with RegistryClient(
            hosts_dir=settings.hosts_dir,
            plain_http=settings.plain_http,
            credentials=self._parts.registry.credentials,
        ) as client:
            with trio.fail_after(PROBE_TIMEOUT):
                await client.get_manifest(reference)

    def _layers(self, names: bool = True) -> list[LayerStatus]:
        """What each mounted layer has fetched and served, for /status and /metrics; without
        ``names``, no image references."""
        layers: list[LayerStatus] = []
        mounted = self._parts.layers
        for snapshot_id, reader in sorted(tuple(mounted.readers.items())):
            stats = reader.stats
            state, cached = mounted.state(snapshot_id)
            layers.append(
                LayerStatus(
                    id=snapshot_id,
                    image=reader.image if names else "",
                    layer=reader.name,
                    size=stats.size,
                    fetched=stats.fetched,
                    served=stats.served,
                    prefetched=stats.prefetched,
                    cached_percent=100.0 * cached,
                    state=state,
                    fetched_percent=min(100.0, 100.0 * stats.fetched / stats.size)
                    if stats.size
                    else 100.0,
                    fetch_rate=stats.fetch_rate(),
                )
            )
        return layers

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The metrics address: anyone who reaches it, so image names only if configured."""
        return self._answer(environ, start_response, self._names)

    def _answer(
        self, environ: WSGIEnvironment, start_response: StartResponse, names: bool
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path == "/healthz":
            healthy, reason = self.health(names)
            status = "200 OK" if healthy else "503 Service Unavailable"
            return _reply(start_response, status, "text/plain", f"{reason}\n".encode())
        if path == "/status":
            report = json.dumps(self.status(names), indent=1).encode()
            return _reply(start_response, "200 OK", "application/json", report)
        return _reply(
            start_response, "404 Not Found", "text/plain", b"try /metrics, /healthz or /status\n"
        )

    def _control_app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/pull":
            return self._pull(environ, start_response)
        if path != "/registry":
            # Root's alone: root sees containerd's images anyway.
            return self._answer(environ, start_response, names=True)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        registry = query.get("registry", [""])[0]
        try:
            if not registry:
                raise InvalidArgumentError("/registry needs ?registry=HOST[&reference=REF]")
            answer = self.registry(registry, query.get("reference", [""])[0])
        except InvalidArgumentError as exc:
            return _reply(start_response, "400 Bad Request", "text/plain", f"{exc}\n".encode())
        return _reply(
            start_response, "200 OK", "application/json", json.dumps(answer, indent=1).encode()
        )

    def _pull(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """``POST /pull``: a ``PullRequest`` in, its ``PullEvent`` lines out as they happen."""
        if environ.get("REQUEST_METHOD") != "POST":
            return _reply(start_response, "405 Method Not Allowed", "text/plain", b"POST\n")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if not 0 < length <= MAX_PULL_REQUEST:
                raise InvalidArgumentError(f"a pull request has 1 to {MAX_PULL_REQUEST} bytes")
            events = self._pulls.start(environ["wsgi.input"].read(length))
        except (InvalidArgumentError, ValueError) as exc:
            return _reply(start_response, "400 Bad Request", "text/plain", f"{exc}\n".encode())
        except UnavailableError as exc:
            status = "503 Service Unavailable"
            return _reply(start_response, status, "text/plain", f"{exc}\n".encode())
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        return Streamed(events)


def _reply(start_response: StartResponse, status: str, kind: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


def _by_reason(counter: Counter) -> dict[str, int]:
    return {
        sample.labels["reason"]: int(sample.value)
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
