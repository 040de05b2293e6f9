"""Prometheus metrics. Every metric lazy2dfs exports is declared here, so names, labels and
cardinality can be reviewed in one file."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, Info

from lazy2dfs import __version__

DAEMON = Info("lazy2dfs_daemon", "The running lazy2dfs daemon.")
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
    "Chunk cache lookups and changes, by event (hit, miss, write, eviction, corrupt, disk_full).",
    ["event"],
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
