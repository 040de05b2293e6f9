"""Prometheus metrics. Every metric lazy2dfs exports is declared here, so names, labels and
cardinality can be reviewed in one file; this module imports nothing of lazy2dfs, so any part
can count without import cycles. Series computed at scrape time (per mounted layer, the cache's
size) are collected by ``lazy2dfs.observability``.

Cardinality is bounded whatever the images: labels are methods, operations, reasons, status
codes, registry hosts, and, for the per-layer series, the layer digest and image reference of
layers mounted right now (never a file). Per-layer series are read from the mounted readers at
scrape time rather than kept in labelled counters, so a detached layer's series disappear with
it instead of leaking. No label ever holds a URL, token or credential.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from prometheus_client import Counter, Histogram, Info

from lazy2dfs import __version__

DAEMON = Info("lazy2dfs_daemon", "The running lazy2dfs daemon: version and config digest.")
DAEMON.info({"version": __version__})

GRPC_CALLS = Counter(
    "lazy2dfs_grpc_calls",
    "Snapshot API calls served, by method and gRPC status code.",
    ["method", "code"],
)
GRPC_LATENCY = Histogram(
    "lazy2dfs_grpc_call_duration_seconds",
    "Time to serve one snapshot API call.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

CACHE_EVENTS = Counter(
    "lazy2dfs_cache_events",
    "Segments the cache took or refused, by event: write (decoded from the registry), copied (from"
    " another cached blob holding the same chunks), full (cache.max_bytes reached and nothing"
    " evictable: served uncached), disk_full (the disk refused the write: served uncached).",
    ["event"],
)
CACHE_EVICTIONS = Counter(
    "lazy2dfs_cache_evictions",
    "Cached blobs removed, least recently used first, to keep the cache under cache.max_bytes.",
)
HTTP_REFUSED = Counter(
    "lazy2dfs_http_refused_connections",
    "Connections to /metrics, /healthz and /status answered 503 at once because the listener"
    " (observability: metrics_address; control: the control socket) served as many as it may.",
    ["listener"],
)

LAZY_LAYERS = Counter(
    "lazy2dfs_lazy_layers",
    "Layers mounted lazily, so that containerd downloaded nothing (restores after a restart"
    " excluded); with lazy2dfs_fallbacks_total, the share of layers served lazily.",
)
FALLBACKS = Counter(
    "lazy2dfs_fallbacks",
    "Layers meant to be served lazily that containerd had to download instead, by reason"
    " (unreachable, toc-mismatch, ...): each is a failure worth an alert.",
    ["reason"],
)
PLAIN_LAYERS = Counter(
    "lazy2dfs_plain_layers",
    "Layers containerd downloaded because they are not in a lazy format (not-lazy-format: plain"
    " tar.gz, e.g. the base of a 2DFS image), as their image was built: not a failure.",
    ["reason"],
)

BYTES_FETCHED = Counter(
    "lazy2dfs_fetched_bytes", "Compressed bytes fetched from registries for lazily served layers."
)
BYTES_SERVED = Counter("lazy2dfs_served_bytes", "File bytes served to readers through FUSE.")
PAGE_CACHE_FILLED = Counter(
    "lazy2dfs_page_cache_filled_bytes",
    "Fetched, verified bytes offered to the kernel for their files' page cache as they"
    " arrived (fuse.fill_page_cache); it keeps those of files it has looked up, which readers"
    " then read without a FUSE request.",
)
PAGE_CACHE_SKIPPED = Counter(
    "lazy2dfs_page_cache_skipped_bytes",
    "Verified bytes not offered to the page cache because the FUSE keeper was still writing"
    " the earlier ones (every slot of the ring they share taken); readers get them through"
    " FUSE reads instead.",
)
READ_WAIT = Histogram(
    "lazy2dfs_read_network_wait_seconds",
    "Time a reader waited on a registry range request.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

VERIFICATION_FAILURES = Counter(
    "lazy2dfs_verification_failures",
    "Bytes that failed verification, by what: chunk (a chunk's sha256 or its compression), toc"
    " (the TOC against its manifest annotation), diff_id (a complete layer's tar stream against"
    " its image's config, or its TOC).",
    ["what"],
)

REGISTRY_REQUESTS = Counter(
    "lazy2dfs_registry_requests",
    "HTTP requests answered by registries and their blob stores, by host, method and status.",
    ["host", "method", "code"],
)
REGISTRY_LATENCY = Histogram(
    "lazy2dfs_registry_request_duration_seconds",
    "Time from sending a registry request until its response headers arrived.",
    ["host", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WHOLE_BLOBS = Counter(
    "lazy2dfs_registry_whole_blobs",
    "Whole blobs a registry sent for a range request (a pull-through mirror that does not hold"
    " the blob yet), by what became of them: spilled (kept on disk to serve later ranges),"
    " verified, resumed (the stream broke and went on from another endpoint), failed, not_kept"
    " (no room: only the asked ranges were kept).",
    ["outcome"],
)
MIRROR_WARM = Histogram(
    "lazy2dfs_registry_mirror_warm_seconds",
    "Time reads of a blob waited for a pull-through mirror to fetch it from its origin and"
    " serve ranges of it, by outcome: ranges, or whole (it still answered with whole blobs"
    " after registry.mirror_warm_seconds and its next whole answer was kept).",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MIRROR_WHOLE_CLOSED = Counter(
    "lazy2dfs_registry_mirror_whole_answers_closed",
    "Whole-blob answers of a warming pull-through mirror closed unread; each costs its origin"
    " what was in flight.",
)
REGISTRY_FAILURES = Counter(
    "lazy2dfs_registry_failures",
    "Registry requests that failed (network error, timeout, 429 or 5xx; each retry counts),"
    " by the host that failed.",
    ["host"],
)
REGISTRY_RETRIES = Counter(
    "lazy2dfs_registry_retries",
    "Registry requests tried again, by cause: status (429 or 5xx) or network (connection"
    " error, timeout).",
    ["cause"],
)

MIRROR_REQUESTS = Counter(
    "lazy2dfs_mirror_requests",
    "Requests the partition mirror answered, by what was asked (partition: a partition tag,"
    " computed here; computed: a computed manifest or config by digest; manifest, blob: relayed"
    " from the registry; other) and HTTP status.",
    ["what", "code"],
)

FUSE_OPERATIONS = Counter(
    "lazy2dfs_fuse_operations",
    "FUSE requests served, by operation and result (ok, or the errno name returned).",
    ["operation", "result"],
)
FUSE_LATENCY = Histogram(
    "lazy2dfs_fuse_operation_duration_seconds",
    "Time to answer one FUSE request, by operation.",
    ["operation"],
    buckets=(
        0.00005,
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
)


@dataclass(frozen=True)
class Fallback:
    """One layer containerd had to download, as ``lazy2dfs status`` and ``lazy2dfs pull``
    show it."""

    time: float  # seconds since the epoch
    layer: str
    image: str
    reason: str
    detail: str  # what went wrong, or why the layer is not lazy, and what to do
    by_design: bool  # the layer is not in a lazy format: downloading it is no failure

    def to_json(self) -> dict[str, str | float | bool]:
        return asdict(self)


class RecentFallbacks:
    """The last ``size`` fallbacks, kept in memory for ``lazy2dfs status`` (the log and the
    ``lazy2dfs_fallbacks_total`` counter keep the full history)."""

    def __init__(self, size: int = 50) -> None:
        self._items: deque[Fallback] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, layer: str, image: str, reason: str, detail: str, by_design: bool) -> None:
        with self._lock:
            self._items.append(Fallback(time.time(), layer, image, reason, detail, by_design))

    def items(self) -> list[Fallback]:
        """Oldest first."""
        with self._lock:
            return list(self._items)


RECENT_FALLBACKS = RecentFallbacks()


@dataclass
class RegistryHealth:
    """What the daemon saw of one registry host."""

    host: str
    failures: int = 0  # failed attempts since the daemon started
    failing_since: float = 0.0  # seconds since the epoch; 0 once an attempt succeeds
    last_failure: float = 0.0
    last_error: str = ""


class RegistryFailures:
    """Registry hosts that failed to answer, for ``/healthz`` and ``lazy2dfs status``: a read
    waiting through retries should show as a failing registry while it waits, not only once it
    gives up with EIO. A host is failing from its first failed attempt until one succeeds."""

    def __init__(self) -> None:
        self._hosts: dict[str, RegistryHealth] = {}
        self._lock = threading.Lock()

    def failed(self, host: str, error: str) -> None:
        now = time.time()
        REGISTRY_FAILURES.labels(host).inc()
        with self._lock:
            health = self._hosts.setdefault(host, RegistryHealth(host))
            health.failures += 1
            health.failing_since = health.failing_since or now
            health.last_failure = now
            health.last_error = error

    def answered(self, host: str) -> None:
        health = self._hosts.get(host)
        if health is not None and health.failing_since:
            with self._lock:
                health.failing_since = 0.0

    def items(self) -> list[RegistryHealth]:
        """Hosts that ever failed, the one failing longest first."""
        with self._lock:
            hosts = [RegistryHealth(**asdict(h)) for h in self._hosts.values()]
        return sorted(hosts, key=lambda h: (h.failing_since or float("inf"), h.host))


REGISTRY_HEALTH = RegistryFailures()
