"""The ``/status`` document: written by the daemon (``lazy2dfs.observability``), read by
``lazy2dfs status``. Its own module so that the command does not import the daemon (FUSE,
gRPC) to read it."""

from __future__ import annotations

from typing import TypedDict


class LayerStatus(TypedDict):
    id: int
    image: str
    layer: str
    size: int
    fetched: int
    served: int
    prefetched: int
    fetched_percent: float
    fetch_rate: float  # bytes per second, recent


class CacheStatus(TypedDict):
    bytes: int
    limit_bytes: int
    layers: int  # blobs cached, in use or not


class FallbackStatus(TypedDict):
    by_reason: dict[str, int]
    recent: list[dict[str, str | float]]


class StatusReport(TypedDict):
    version: str
    pid: int
    uptime_seconds: float
    config_digest: str
    healthy: bool
    health: str
    snapshots: dict[str, int]
    cache: CacheStatus
    layers: list[LayerStatus]
    fallbacks: FallbackStatus
