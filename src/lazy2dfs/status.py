"""What the daemon tells the ``lazy2dfs`` commands, and how they ask it.

The documents are written by the daemon (``lazy2dfs.observability``) and read by ``lazy2dfs
status`` and ``lazy2dfs pull``; they live here so that the commands do not import the daemon
(FUSE, gRPC) to read them.

The commands ask over the daemon's control socket (``Config.control_address``): HTTP on a unix
socket that exists whenever the daemon serves, whatever ``metrics_address`` says, and that
only root can open. ``/status`` and ``/healthz`` are also on the metrics address when one is
set; ``/registry`` and ``/pull`` are on the control socket only, because they make the daemon
contact a registry (and, for ``/pull``, containerd).

``/pull`` is how ``lazy2dfs pull`` works: the command sends a ``PullRequest`` and prints the
events the daemon streams back, one JSON object per line (``PullEvent``), while the daemon does
the pull with its registry connections and its settings. The command then needs nothing but
the standard library and this module, so it starts in a tenth of the time (importing gRPC,
httpx, trio and pydantic took 0.6 s of a 1.2 s pull).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Protocol, TypedDict, cast
from urllib.parse import urlencode

from lazy2dfs.errors import (
    FailedPreconditionError,
    Lazy2dfsError,
    UnavailableError,
    causes,
    describe,
)

# A /pull event: a step's line, or the report of an image of many layers.
MAX_EVENT_BYTES = 1 << 20
# Long enough for /registry, whose manifest fetch the daemon retries for a few seconds; and
# for /pull, whose stream carries at least a heartbeat every ``PULL_HEARTBEAT`` seconds.
CONTROL_TIMEOUT = 60.0
PULL_HEARTBEAT = 10.0


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


class PullRequest(TypedDict):
    """What ``lazy2dfs pull`` asks of the daemon (the body of ``POST /pull``)."""

    reference: str
    containerd_address: str  # containerd's socket, which the daemon (root) connects to
    namespace: str
    snapshotter: str  # the proxy plugin's name in containerd's configuration
    plain_http: bool  # reach the reference's registry over plain HTTP, whatever the daemon says
    hosts_dir: str  # a hosts.toml directory for the manifest and config; "" for the daemon's
    config_path: str  # the daemon configuration the command read: fixes name it


class PullEvent(TypedDict, total=False):
    """One line of the ``/pull`` stream: exactly one key. ``report`` (the ``PullReport`` as
    JSON) or ``error`` (the message, one line, what to do) ends it; ``alive`` says the pull
    goes on while nothing else happens (an unpacked layer can take minutes)."""

    step: str
    update: tuple[int, int, str | None]  # bytes done, bytes in all, the transfer's label
    done: str
    report: dict[str, object]
    error: str
    alive: bool


class ProgressSink(Protocol):
    """Where pull events go (``lazy2dfs.progress.Progress`` in the command)."""

    def step(self, label: str) -> None: ...

    def update(self, done: int, total: int, label: str | None = None) -> None: ...

    def done(self, summary: str) -> None: ...


class _UnixConnection(http.client.HTTPConnection):
    """HTTP on a unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("lazy2dfs", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Asks the daemon over its control socket; errors say what to do."""

    def __init__(self, socket: Path, timeout: float = CONTROL_TIMEOUT) -> None:
        self.socket = socket
        self._timeout = timeout

    def status(self) -> StatusReport:
        return cast(StatusReport, self._get("/status", {}))

    def health(self) -> tuple[bool, str]:
        """Whether the daemon serves (``/healthz``), and the reason it gives."""
        status, body = self._request("/healthz", {})
        return status == 200, body.decode(errors="replace").strip()

    def registry(self, registry: str, reference: str = "") -> RegistryAnswer:
        """How the daemon reaches ``registry``; with ``reference`` (pinned by digest) it also
        fetches that manifest, as it would for a lazy layer."""
        query = {"registry": registry, "reference": reference}
        return cast(RegistryAnswer, self._get("/registry", query))

    def pull(self, request: PullRequest, progress: ProgressSink) -> dict[str, object]:
        """Has the daemon pull, showing its progress on ``progress``; returns its report."""
        with closing(self._connection()) as connection:
            try:
                connection.request(
                    "POST",
                    "/pull",
                    body=json.dumps(request).encode(),
                    headers={"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                if response.status != 200:
                    raise self._refused("/pull", response.status, response.read())
                for line in _lines(response):
                    report = _show(line, progress)
                    if report is not None:
                        return report
            except OSError as exc:
                raise self._unreachable(exc) from exc
        raise UnavailableError(
            f"the lazy2dfs daemon at {self.socket} stopped answering before the pull ended"
            " (did it restart?): run the pull again; what it had pulled is kept"
        )

    def _connection(self) -> _UnixConnection:
        return _UnixConnection(self.socket, self._timeout)

    def _request(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        """``GET path?query``: the status and the body."""
        target = path + ("?" + urlencode(query) if query else "")
        with closing(self._connection()) as connection:
            try:
                connection.request("GET", target)
                response = connection.getresponse()
                return response.status, response.read()
            except OSError as exc:
                raise self._unreachable(exc) from exc

    def _get(self, path: str, query: dict[str, str]) -> object:
        status, body = self._request(path, query)
        if status != 200:
            raise self._refused(path, status, body)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Lazy2dfsError(f"the lazy2dfs daemon at {self.socket} sent no JSON") from exc

    def _refused(self, path: str, status: int, body: bytes) -> Lazy2dfsError:
        reason = body.decode(errors="replace").strip()
        if status == 503:
            return UnavailableError(f"the lazy2dfs daemon at {self.socket} is busy: {reason}")
        return Lazy2dfsError(
            f"the lazy2dfs daemon at {self.socket} answered {path} with HTTP {status}: {reason}"
        )

    def _unreachable(self, exc: OSError) -> Lazy2dfsError:
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


def _lines(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The stream's lines, each bounded (a line is one event, a report at most)."""
    while line := response.readline(MAX_EVENT_BYTES):
        yield line


def _show(line: bytes, progress: ProgressSink) -> dict[str, object] | None:
    """Shows one ``PullEvent`` on ``progress``; the report once the pull is done."""
    try:
        event = cast(PullEvent, json.loads(line))
    except ValueError as exc:
        raise Lazy2dfsError(f"the lazy2dfs daemon sent a line that is not JSON: {exc}") from exc
    if "error" in event:
        raise Lazy2dfsError(event["error"])
    if "report" in event:
        return event["report"]
    if "step" in event:
        progress.step(event["step"])
    elif "update" in event:
        done, total, label = event["update"]
        progress.update(done, total, label)
    elif "done" in event:
        progress.done(event["done"])
    return None
