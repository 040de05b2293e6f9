"""The daemon's /metrics, /healthz and /status endpoints, and the metrics and log lines of the
read path's failures (verification, retries), below containerd."""

import concurrent.futures
import io
import json
import logging
import os
import re
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from devstack.mounts import mounts_under
from devstack.process import lazy2dfs_argv
from devstack.registry import free_port
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.api import snapshots_pb2 as pb
from lazy2dfs.cache.store import CacheStore
from lazy2dfs.cli.status import render
from lazy2dfs.config import FetchConfig
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.layers.mounted import EstargzLayers
from lazy2dfs.logfmt import LogfmtFormatter
from lazy2dfs.observability import CLIENT_TIMEOUT, MAX_CONNECTIONS
from lazy2dfs.registry_client.retry import RetryableError, RetryPolicy, on_behalf_of
from lazy2dfs.remote.fetch import FetchContext
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError
from lazy2dfs.status import StatusReport
from tests.support.fuse import mounted_session
from tests.support.memory import MemoryLocator

DEPLOY = Path(__file__).parents[2] / "deploy"
LAYER = "sha256:" + "c" * 64
IMAGE = "127.0.0.1:5000/obs/m:v1"
REQUEST = LayerRequest("sha256:" + "a" * 64, IMAGE, LAYER)
# Fewer than a listener serves at once: /healthz must still find a thread.
SLOW_CLIENTS = 8
FLOOD = 100


def get(address: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(address, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[tuple[LocalSnapshotter, str]]:
    address = f"127.0.0.1:{free_port()}"
    with LocalSnapshotter(tmp_path / "d", config=f'metrics_address = "{address}"\n') as daemon:
        yield daemon, address


def test_metrics_health_and_status_of_a_serving_daemon(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    daemon, address = observed
    with daemon.channel() as channel:
        daemon.stub(channel).Prepare(pb.PrepareSnapshotRequest(key="a"))
    samples = scrape(address)
    (info,) = [labels for name, labels in samples if name == "lazy2dfs_daemon_info"]
    assert dict(info)["version"] and len(dict(info)["config_digest"]) == 12
    assert samples[("lazy2dfs_snapshots", (("kind", "active"),))] == 1
    assert samples[("lazy2dfs_snapshots", (("kind", "committed"),))] == 0
    assert samples[("lazy2dfs_grpc_calls_total", (("code", "OK"), ("method", "Prepare")))] == 1
    assert samples[("lazy2dfs_remote_layers", ())] == 0
    assert samples[("lazy2dfs_cache_limit_bytes", ())] == 20 * 1024**3
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert get(address, "/healthz") == (200, b"ok\n")
    status, body = get(address, "/status")
    report = json.loads(body)
    assert status == 200 and report["healthy"] is True and report["layers"] == []
    assert report["snapshots"] == {"active": 1, "committed": 0, "view": 0}
    assert daemon.process is not None and report["pid"] == daemon.process.pid


def test_healthz_is_503_with_a_reason_when_the_socket_is_gone(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    daemon, address = observed
    os.unlink(daemon.address)
    status, body = get(address, "/healthz")
    assert status == 503
    assert str(daemon.address) in body.decode() and "missing" in body.decode()


def test_the_dashboard_graphs_only_metrics_the_daemon_exports(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    _, address = observed
    status, body = get(address, "/metrics")
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    dashboard = json.loads((DEPLOY / "grafana/lazy2dfs-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"lazy2dfs_[a-z_]+", expr)
    }
    assert used and used <= families, used - families
    # Every panel the brief names: lazy vs fallback, bytes, read wait, FUSE, cache, gRPC.
    for family in (
        "lazy2dfs_lazy_layers",
        "lazy2dfs_fallbacks",
        "lazy2dfs_fetched_bytes",
        "lazy2dfs_served_bytes",
        "lazy2dfs_read_network_wait_seconds",
        "lazy2dfs_fuse_operation_duration_seconds",
        "lazy2dfs_cache_events",
        "lazy2dfs_grpc_call_duration_seconds",
    ):
        assert family in used
    scrape = (DEPLOY / "prometheus/prometheus.yml").read_text()
    assert "metrics_path: /metrics" in scrape and "prometheus_io_port" in scrape


def test_the_endpoints_listen_on_the_configured_address_only(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    _, address = observed
    port = int(address.rpartition(":")[2])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


def test_a_taken_metrics_port_stops_the_daemon_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "config.toml").write_text(f'metrics_address = "127.0.0.1:{port}"\n')
        done = subprocess.run(
            [
                *lazy2dfs_argv(),
                "serve",
                "--root",
                str(tmp_path / "root"),
                "--address",
                str(tmp_path / "s.sock"),
                "--config",
                str(tmp_path / "config.toml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "s.sock").exists()
    assert not mounts_under(tmp_path / "root" / "fuse")


def _status(*args: str, address: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZY2DFS_")}
    env["LAZY2DFS_ADDRESS"] = str(address)
    return subprocess.run(
        [*lazy2dfs_argv(), "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_status_works_against_a_daemon_with_metrics_off(daemon: LocalSnapshotter) -> None:
    done = _status("--config", str(daemon.config_path), address=daemon.address)
    assert done.returncode == 0, done.stderr
    assert "healthy" in done.stdout and "no remote layers mounted" in done.stdout
    control = daemon.address.with_suffix(".control.sock")
    assert control.is_socket() and control.stat().st_mode & 0o777 == 0o600


def test_status_health_answers_for_kubelets_exec_probe(tmp_path: Path) -> None:
    """``lazy2dfs status --health``: exit 0 while the daemon serves, 1 with the reason when it
    is unhealthy or gone."""
    with LocalSnapshotter(tmp_path / "d") as daemon:
        config = str(daemon.config_path)
        done = _status("--health", "--config", config, address=daemon.address)
        assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
        os.unlink(daemon.address)  # a gRPC socket gone: containerd cannot reach the daemon
        done = _status("--health", "--config", config, address=daemon.address)
        assert done.returncode == 1
        assert done.stderr == f"unhealthy: gRPC socket {daemon.address} is missing\n"
    done = _status("--health", "--config", config, address=daemon.address)
    assert done.returncode == 1
    assert "daemon is not running" in done.stderr and ".control.sock" in done.stderr


def test_status_without_a_daemon_says_how_to_start_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("")
    done = _status("--config", str(tmp_path / "config.toml"), address=tmp_path / "none.sock")
    assert done.returncode == 1
    assert "daemon is not running" in done.stderr and str(tmp_path / "none") in done.stderr
    assert "lazy2dfs serve" in done.stderr and "--config" in done.stderr


def _fallback(
    image: str, reason: str, detail: str, by_design: bool = False
) -> dict[str, str | float | bool]:
    item: dict[str, str | float | bool] = {"time": 0.0, "layer": LAYER, "image": image}
    item.update(reason=reason, detail=detail, by_design=by_design)
    return item


def test_status_table_is_narrow_and_names_layers_cache_registries_and_fallbacks() -> None:
    pinned = f"{IMAGE}@sha256:{'e' * 64}"
    report: StatusReport = {
        "version": "0.1.0",
        "pid": 7,
        "uptime_seconds": 75.0,
        "config_digest": "0123456789ab",
        "healthy": True,
        "health": "degraded: registry 127.0.0.1:5000 failing since …",
        "snapshots": {"active": 1, "committed": 2, "view": 0},
        "cache": {"bytes": 3 * 2**20, "limit_bytes": 12 * 2**20, "layers": 3},
        "layers": [
            {
                "id": 4,
                "image": pinned,
                "layer": LAYER,
                "size": 8 * 2**20,
                "fetched": 2 * 2**20,
                "served": 1000,
                "prefetched": 0,
                "cached_percent": 25.0,
                "state": "fetching",
                "fetched_percent": 25.0,
                "fetch_rate": 2**20,
            },
            {
                "id": 5,
                "image": pinned,
                "layer": "sha256:" + "d" * 64,
                "size": 2**20,
                "fetched": 0,
                "served": 0,
                "prefetched": 0,
                "cached_percent": 100.0,
                "state": "verified",
                "fetched_percent": 0.0,
                "fetch_rate": 0.0,
            },
        ],
        "fallbacks": {
            "by_reason": {"unreachable": 1},
            "plain": {"not-lazy-format": 2},
            "recent": [
                _fallback(pinned, "not-lazy-format", "plain tar.gz", by_design=True),
                _fallback(pinned, "unreachable", "nothing listens at 127.0.0.1:5000"),
            ],
        },
        "registries": [
            {
                "host": "127.0.0.1:5000",
                "failures": 17,
                "failing_since": 1.0,
                "last_failure": 2.0,
                "last_error": "nothing listens at 127.0.0.1:5000 (connection refused)",
            }
        ],
    }
    out = io.StringIO()
    render(report, out)
    text = out.getvalue()
    assert "DEGRADED: registry 127.0.0.1:5000" in text and "up 1m15s" in text
    assert "3.0 MiB of 12.0 MiB (25%), 3 layers" in text
    assert "1 active, 2 committed, 0 view" in text
    rows = [line for line in text.splitlines() if line.startswith("obs/m:v1 ")]
    assert len(rows) == 2 and max(len(row) for row in rows) <= 100
    fetching, verified = rows
    assert "c" * 12 in fetching and "sha256" not in fetching and "fetching" in fetching
    assert "25%" in fetching and "2.0 MiB" in fetching and "1.0 MiB/s" in fetching
    assert "verified" in verified and "100%" in verified
    assert "registry 127.0.0.1:5000: failing since" in text and "17 failed attempts" in text
    assert "fallbacks since start: 1 unreachable" in text
    assert "downloaded by design since start: 2 not-lazy-format" in text
    assert "unreachable: nothing listens at 127.0.0.1:5000" in text
    assert "not-lazy-format: plain tar.gz" not in text


# The read path in one process: a blob in memory behind a real FUSE mount.


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[EstargzLayers, MemoryLocator]]:
    files = {"model/weights.bin": os.urandom(1024 * 1024)}
    locator = MemoryLocator.of_files(files, tmp_path, WriterOptions(chunk_size=256 * 1024))
    with mounted_session(tmp_path) as session:
        store = CacheStore(tmp_path / "cache", max_bytes=1 << 30)
        context = session.call_sync(
            lambda: FetchContext(store, deadline=FetchConfig().deadline_seconds)
        )
        yield EstargzLayers(tmp_path, session, context, locator, background_fetch=False), locator


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def logfmt_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    formatter = LogfmtFormatter()
    return [formatter.format(r) for r in caplog.records if r.getMessage() == event]


def test_layer_stats_count_every_byte_the_blob_served(
    remote: tuple[EstargzLayers, MemoryLocator],
) -> None:
    layers, locator = remote
    layers.attach(1, layers.resolve(REQUEST))
    stats = layers.readers[1].stats
    assert stats.fetched == locator.blob.served > 0  # footer and TOC
    data = (layers.path(1) / "model/weights.bin").read_bytes()
    assert stats.fetched == locator.blob.served
    assert stats.served == len(data) and stats.prefetched == 0
    assert stats.fetch_rate() == pytest.approx(stats.fetched / 10.0, rel=0.01)


def test_a_toc_opened_ahead_is_fetched_once_and_counted_once(
    remote: tuple[EstargzLayers, MemoryLocator],
) -> None:
    """``lazy2dfs pull`` has the daemon open every layer's TOC before the first Prepare: the
    Prepare then fetches nothing, and the layer's stats still count the footer and TOC."""
    layers, locator = remote
    layers.open_ahead([REQUEST])
    deadline = time.monotonic() + 10
    while locator.blob.served == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    layers.attach(1, layers.resolve(REQUEST))  # waits for the opening under way
    opened = locator.blob.served
    assert layers.readers[1].stats.fetched == opened > 0  # fetched once, counted
    layers.attach(2, layers.resolve(REQUEST))  # the same blob under another parent
    assert locator.blob.served == opened
    assert layers.readers[2].stats.fetched == 0


def test_a_corrupt_chunk_is_counted_and_logged_with_layer_image_and_reason(
    remote: tuple[EstargzLayers, MemoryLocator], caplog: pytest.LogCaptureFixture
) -> None:
    layers, locator = remote
    layers.attach(1, layers.resolve(REQUEST))
    before = value("lazy2dfs_verification_failures_total", what="chunk")
    locator.blob.corrupt_at = len(locator.blob.data) // 4
    with caplog.at_level(logging.ERROR, logger="lazy2dfs"), pytest.raises(OSError):
        (layers.path(1) / "model/weights.bin").read_bytes()
    # The kernel may retry the failed read: each attempt fetches and fails again. A read-ahead
    # may still be between counting its failure and logging it: wait (bounded) for it.
    deadline = time.monotonic() + 5.0
    while True:
        lines = logfmt_lines(caplog, "chunk verification failed")
        counted = value("lazy2dfs_verification_failures_total", what="chunk") - before
        if counted == len(lines) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == len(lines)
    assert lines
    for line in lines:
        assert f"layer={LAYER}" in line and f"image={IMAGE}" in line and "reason=" in line


def test_a_toc_mismatch_is_a_verification_failure_and_a_fallback(
    remote: tuple[EstargzLayers, MemoryLocator], caplog: pytest.LogCaptureFixture
) -> None:
    layers, locator = remote
    locator.toc_digest = "sha256:" + "0" * 64
    before = value("lazy2dfs_verification_failures_total", what="toc")
    with (
        caplog.at_level(logging.ERROR, logger="lazy2dfs"),
        pytest.raises(NotLazyError) as excinfo,
    ):
        layers.resolve(REQUEST)
    assert value("lazy2dfs_verification_failures_total", what="toc") == before + 1
    (line,) = logfmt_lines(caplog, "TOC verification failed")
    assert f"layer={LAYER}" in line and f"image={IMAGE}" in line and "reason=" in line
    assert excinfo.value.reason == "toc-mismatch"


def test_retries_are_counted_and_logged_for_the_layer_they_serve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.001)
    before = {c: value("lazy2dfs_registry_retries_total", cause=c) for c in ("status", "network")}
    failures: list[Exception] = [RetryableError("GET /v2/x: HTTP 503"), httpx.ConnectError("no")]

    async def attempt() -> None:
        if failures:
            raise failures.pop(0)

    async def fetch() -> None:
        with on_behalf_of(layer=LAYER, image=IMAGE):
            await policy.run("blob x", attempt)

    with caplog.at_level(logging.INFO, logger="lazy2dfs"):
        trio.run(fetch)
    assert value("lazy2dfs_registry_retries_total", cause="status") == before["status"] + 1
    assert value("lazy2dfs_registry_retries_total", cause="network") == before["network"] + 1
    lines = logfmt_lines(caplog, "registry retry")
    assert len(lines) == 2
    for line in lines:
        assert f"layer={LAYER}" in line and f"image={IMAGE}" in line and "reason=" in line


def _healthz(where: LocalSnapshotter | str) -> tuple[int, float]:
    """/healthz over the control socket of a daemon, or at a metrics address; and how long
    it took to answer."""
    started = time.monotonic()
    if isinstance(where, str):
        code, _ = get(where, "/healthz")
    else:
        transport = httpx.HTTPTransport(uds=str(where.address.with_suffix(".control.sock")))
        with httpx.Client(transport=transport, timeout=10) as client:
            code = client.get("http://lazy2dfs/healthz").status_code
    return code, time.monotonic() - started


def _connect(daemon: LocalSnapshotter, address: str, count: int) -> list[list[socket.socket]]:
    """``count`` connections to the metrics address, and as many to the control socket."""
    host, _, port = address.rpartition(":")
    metrics_address = [
        socket.create_connection((host, int(port)), timeout=10) for _ in range(count)
    ]
    control = []
    for _ in range(count):
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(str(daemon.address.with_suffix(".control.sock")))
        control.append(conn)
    return [metrics_address, control]


def _threads(daemon: LocalSnapshotter) -> int:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    (count,) = re.findall(r"^Threads:\s+(\d+)", status, re.MULTILINE)
    return int(count)


def test_slow_clients_neither_hold_up_healthz_nor_stay_connected(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    """Half the connections send nothing, half a byte of a request every half second (a
    timeout on each read alone would never cut those off); /healthz answers meanwhile on both
    listeners, and every slow connection is closed once its time is up."""
    daemon, address = observed
    slow = [c for listener in _connect(daemon, address, SLOW_CLIENTS) for c in listener]
    request = b"GET /healthz HTTP/1.0\r\n\r\n"
    opened = time.monotonic()
    closed_after: dict[socket.socket, float] = {}
    try:
        for where in (address, daemon):
            code, took = _healthz(where)
            assert code == 200 and took < 1.0, (where, code, took)
        sent = 0
        while len(closed_after) < len(slow):
            elapsed = time.monotonic() - opened
            assert elapsed < CLIENT_TIMEOUT + 5, f"{len(slow) - len(closed_after)} still open"
            for i, conn in enumerate(slow):
                if conn in closed_after:
                    continue
                readable, _, _ = select.select([conn], [], [], 0)
                if readable and conn.recv(1024) == b"":
                    closed_after[conn] = elapsed
                elif i % 2 and sent < len(request):
                    conn.send(request[sent : sent + 1])
            sent += 1
            time.sleep(0.5)
        assert min(closed_after.values()) >= CLIENT_TIMEOUT - 0.5
        assert _healthz(address)[0] == 200
    finally:
        for conn in slow:
            conn.close()


def test_concurrent_healthz_requests_share_one_probe_of_the_fuse_loop(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    """Served at once, they must not take each other's probe in flight for a stuck loop."""
    _, address = observed
    with concurrent.futures.ThreadPoolExecutor(SLOW_CLIENTS) as pool:
        answers = list(pool.map(lambda _: get(address, "/healthz"), range(4 * SLOW_CLIENTS)))
    assert answers == [(200, b"ok\n")] * (4 * SLOW_CLIENTS)


def test_a_flood_of_connections_is_refused_at_once_and_costs_bounded_threads(
    observed: tuple[LocalSnapshotter, str],
) -> None:
    daemon, address = observed
    before = _threads(daemon)
    flood = _connect(daemon, address, FLOOD)
    try:
        for listener in flood:
            # The first connections hold every thread of the listener's pool; past them each
            # one is answered 503 and closed at once.
            for conn in listener[MAX_CONNECTIONS:]:
                readable, _, _ = select.select([conn], [], [], 5)
                assert readable and conn.recv(1024).startswith(b"HTTP/1.0 503")
        # One pool per listener (the metrics address, the control socket) more at most, not a
        # thread per connection; give or take a few of the daemon's own (gRPC, FUSE probe).
        assert _threads(daemon) <= before + 2 * MAX_CONNECTIONS + 4 < 2 * FLOOD
    finally:
        for conn in (c for listener in flood for c in listener):
            conn.close()
    deadline = time.monotonic() + CLIENT_TIMEOUT + 5
    while _healthz(address)[0] != 200:
        assert time.monotonic() < deadline, "the listener stayed full after its clients left"
        time.sleep(0.2)
    refused = scrape(address)
    for name in ("control", "observability"):
        key = ("lazy2dfs_http_refused_connections_total", (("listener", name),))
        assert refused[key] == FLOOD - MAX_CONNECTIONS
