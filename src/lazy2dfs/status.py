"""What the daemon tells the ``lazy2dfs`` commands, and how they ask it.

The documents are written by the daemon (``lazy2dfs.observability``) and read by ``lazy2dfs
status`` and ``lazy2dfs pull``; they live here so that the commands do not import the daemon
(FUSE, gRPC) to read them.

The commands ask over the daemon's control socket (``Config.control_address``): HTTP on a unix
socket that exists whenever the daemon serves, whatever ``metrics_address`` says, and that
only root can open. ``/status`` and ``/healthz`` are also on the metrics address when one is
set; ``/registry`` is on the control socket only, because it makes the daemon contact a
registry.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TypedDict, cast

import httpx

from lazy2dfs.errors import (
    FailedPreconditionError,
    Lazy2dfsError,
    UnavailableError,
    causes,
    describe,
)

# Long enough for /registry, whose manifest fetch the daemon retries for a few seconds.
CONTROL_TIMEOUT = 60.0


class LayerStatus(TypedDict):
    id: int
    image: str
    layer: str
    size: int
    fetched: int  # bytes fetched from the registry since the daemon started
    served: int
    prefetched: int
    cached_percent: float  # of the layer's file bytes on disk, whenever they were fetched
    state: str  # lazy, fetching, complete, verified (served from its local tree) or refused
    fetched_percent: float
    fetch_rate: float  # bytes per second, recent


class CacheStatus(TypedDict):
    bytes: int
    limit_bytes: int
    layers: int  # blobs cached, in use or not


class FallbackStatus(TypedDict):
    by_reason: dict[str, int]  # layers meant to be lazy that were downloaded, by reason
    plain: dict[str, int]  # layers downloaded by design (not in a lazy format), by reason
    recent: list[dict[str, str | float | bool]]


class RegistryFailure(TypedDict):
    """A registry host the daemon failed to reach: ``failing_since`` is 0 once it answers."""

    host: str
    failures: int  # failed attempts since the daemon started
    failing_since: float  # seconds since the epoch; 0 when the last attempt succeeded
    last_failure: float
    last_error: str


class StatusReport(TypedDict):
    version: str
    pid: int
    uptime_seconds: float
    config_digest: str
    healthy: bool
    health: str  # "ok", "degraded: …" (registry failing, daemon fine) or the daemon's problem
    snapshots: dict[str, int]
    cache: CacheStatus
    layers: list[LayerStatus]
    fallbacks: FallbackStatus
    registries: list[RegistryFailure]


class RegistryAnswer(TypedDict):
    """How the daemon reaches a registry, and whether it could fetch a manifest there."""

    registry: str
    endpoints: list[str]  # base URL of each endpoint that may pull, in the order tried
    hosts_dir: str  # the daemon's registry.hosts_dir
    hosts_source: str  # the hosts.toml or certs.d directory that applies, "" if none
    plain_http: list[str]  # the daemon's registry.plain_http
    credentials: bool  # the daemon has credentials for the registry
    docker_config: str  # where the daemon reads credentials
    fetched: bool  # the daemon fetched the manifest asked for (False if none was asked)
    error: str  # why it could not, "" if it could
    unauthorized: bool  # the registry refused the daemon's credentials, or that it had none


class ControlClient:
    """Asks the daemon over its control socket; errors say what to do."""

    def __init__(self, socket: Path, timeout: float = CONTROL_TIMEOUT) -> None:
        self.socket = socket
        self._timeout = timeout

    def status(self) -> StatusReport:
        return cast(StatusReport, self._get("/status", {}))

    def health(self) -> tuple[bool, str]:
        """Whether the daemon serves (``/healthz``), and the reason it gives."""
        response = self._request("/healthz", {})
        return response.status_code == 200, response.text.strip()

    def registry(self, registry: str, reference: str = "") -> RegistryAnswer:
        """How the daemon reaches ``registry``; with ``reference`` (pinned by digest) it also
        fetches that manifest, as it would for a lazy layer."""
        query = {"registry": registry, "reference": reference}
        return cast(RegistryAnswer, self._get("/registry", query))

    def _request(self, path: str, query: dict[str, str]) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        try:
            with httpx.Client(transport=transport, timeout=self._timeout) as client:
                return client.get(f"http://lazy2dfs{path}", params=query)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _get(self, path: str, query: dict[str, str]) -> object:
        response = self._request(path, query)
        if response.status_code != 200:
            raise Lazy2dfsError(
                f"the lazy2dfs daemon at {self.socket} answered {path} with HTTP"
                f" {response.status_code}: {response.text.strip()}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise Lazy2dfsError(f"the lazy2dfs daemon at {self.socket} sent no JSON") from exc

    def _unreachable(self, exc: httpx.TransportError) -> Lazy2dfsError:
        code = next((c.errno for c in causes(exc) if isinstance(c, OSError) and c.errno), None)
        if code in (errno.EACCES, errno.EPERM):
            return FailedPreconditionError(
                f"the lazy2dfs daemon's control socket {self.socket} is root's: run this as root"
            )
        if code in (errno.ENOENT, errno.ECONNREFUSED):
            return UnavailableError(
                f"the lazy2dfs daemon is not running: nothing listens on {self.socket}, its"
                " control socket. Start it (`systemctl start lazy2dfs`, or `lazy2dfs serve`);"
                " if it serves another --address, name its configuration with --config FILE"
                " or LAZY2DFS_ADDRESS=<its --address>"
            )
        return UnavailableError(
            f"the lazy2dfs daemon at {self.socket} did not answer: {describe(exc)}"
        )
