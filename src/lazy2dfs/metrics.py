"""Prometheus metrics. Every metric lazy2dfs exports is declared here, so names, labels and
cardinality can be reviewed in one file.

Cardinality is bounded whatever the images: labels are methods, operations, reasons, status
codes, registry hosts, and, for the per-layer series of ``DaemonCollector``, the layer digest
and image reference of layers mounted right now (never a file). Per-layer series are read from
the mounted readers at scrape time rather than kept in labelled counters, so a detached layer's
series disappear with it instead of leaking. No label ever holds a URL, token or credential.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram, Info
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lazy2dfs import __version__
from lazy2dfs.snapshotter.snapshot import Kind

if TYPE_CHECKING:
    from lazy2dfs.cache.chunks import ChunkCache
    from lazy2dfs.remote.reader import LayerReader

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

CHUNK_CACHE_EVENTS = Counter(
    "lazy2dfs_chunk_cache_events",
    "Chunk lookups and cache changes, by event: memory_hit (decoded chunk in memory), hit (on"
    " disk), miss (fetched from the registry), write, eviction, corrupt, disk_full.",
    ["event"],
)

LAZY_LAYERS = Counter(
    "lazy2dfs_lazy_layers",
    "Layers mounted lazily, so that containerd downloaded nothing (restores after a restart"
    " excluded); with lazy2dfs_fallbacks_total, the share of layers served lazily.",
)
FALLBACKS = Counter(
    "lazy2dfs_fallbacks",
    "Layers that containerd had to download because they could not be served lazily, by reason.",
    ["reason"],
)

BYTES_FETCHED = Counter(
    "lazy2dfs_fetched_bytes", "Compressed bytes fetched from registries for lazily served layers."
)
BYTES_SERVED = Counter("lazy2dfs_served_bytes", "File bytes served to readers through FUSE.")
READ_WAIT = Histogram(
    "lazy2dfs_read_network_wait_seconds",
    "Time a reader waited on a registry range request.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

VERIFICATION_FAILURES = Counter(
    "lazy2dfs_verification_failures",
    "Bytes from a registry that failed their digest, by what: chunk (a chunk's sha256 or its"
    " compression) or toc. Corrupt cache entries count as chunk_cache_events{event=corrupt}.",
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
REGISTRY_RETRIES = Counter(
    "lazy2dfs_registry_retries",
    "Registry requests tried again, by cause: status (429 or 5xx) or network (connection"
    " error, timeout).",
    ["cause"],
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
    """One layer containerd had to download, as ``lazy2dfs status`` lists it."""

    time: float  # seconds since the epoch
    layer: str
    image: str
    reason: str

    def to_json(self) -> dict[str, str | float]:
        return asdict(self)


class RecentFallbacks:
    """The last ``size`` fallbacks, kept in memory for ``lazy2dfs status`` (the log and the
    ``lazy2dfs_fallbacks_total`` counter keep the full history)."""

    def __init__(self, size: int = 50) -> None:
        self._items: deque[Fallback] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, layer: str, image: str, reason: str) -> None:
        with self._lock:
            self._items.append(Fallback(time.time(), layer, image, reason))

    def items(self) -> list[Fallback]:
        """Oldest first."""
        with self._lock:
            return list(self._items)


RECENT_FALLBACKS = RecentFallbacks()


class DaemonCollector(Collector):
    """State read at scrape time: snapshots by kind, mounted remote layers and what each has
    fetched and served, and the chunk cache's size.

    Two snapshots of one layer digest in one image (a layer repeated in an image) share their
    series: their numbers are added, so no scrape ever holds a duplicate series."""

    def __init__(
        self,
        readers: Callable[[], Iterable[LayerReader]],
        cache: ChunkCache,
        snapshots_by_kind: Callable[[], Mapping[Kind, int]],
    ) -> None:
        self._readers = readers
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
            "lazy2dfs_chunk_cache_bytes", "Decoded chunk bytes in the disk cache."
        )
        cache_limit = GaugeMetricFamily(
            "lazy2dfs_chunk_cache_limit_bytes", "The disk cache's bound (cache.max_bytes)."
        )
        cache_entries = GaugeMetricFamily(
            "lazy2dfs_chunk_cache_entries", "Chunks in the disk cache."
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
            readers = list(self._readers())
            for reader in readers:
                stats = reader.stats
                total = totals.setdefault((reader.name, reader.image), [0, 0, 0, 0])
                total[0] += stats.size
                total[1] += stats.fetched
                total[2] += stats.served
                total[3] += stats.prefetched
            remote.add_metric([], len(readers))
            for (layer, image), (s, f, v, p) in sorted(totals.items()):
                size.add_metric([layer, image], s)
                fetched.add_metric([layer, image], f)
                served.add_metric([layer, image], v)
                prefetched.add_metric([layer, image], p)
                ratio.add_metric([layer, image], min(1.0, f / s) if s else 1.0)
            cache_bytes.add_metric([], self._cache.size_bytes)
            cache_limit.add_metric([], self._cache.max_bytes)
            cache_entries.add_metric([], self._cache.entries)
        yield from (snapshots, remote, size, fetched, served, prefetched, ratio)
        yield from (cache_bytes, cache_limit, cache_entries)
