"""``lazy2dfs status``: what the running daemon serves, asked over its control socket.

It asks the daemon rather than reading its root, so it shows the live numbers only the daemon
has (fetch progress and rate, cache use, failing registries, recent fallbacks). The control
socket exists whenever the daemon serves, so a daemon with metrics off answers too; a user who
is not root, who cannot open it, can ask the metrics address instead (``--metrics-address``,
or ``metrics_address`` in the daemon's configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.errors import FailedPreconditionError, Lazy2dfsError, UnavailableError
from lazy2dfs.locations import DEFAULT_CONFIG_PATH, daemon_control_address
from lazy2dfs.progress import human_bytes

if TYPE_CHECKING:
    from lazy2dfs.status import StatusReport

TIMEOUT = 10.0
# --health: past the daemon's own FUSE loop check (2 s), within a probe's timeout.
HEALTH_TIMEOUT = 5.0
# Wildcard binds are reached on loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def register(subparsers: Subparsers) -> None:
    """Adds the ``status`` command to the CLI's ``subparsers``."""
    parser = subparsers.add_parser(
        "status",
        help="show the running daemon's layers, cache, failing registries and fallbacks",
        description="Asks the running daemon over its control socket (beside its gRPC socket;"
        " root only), or over its metrics address with --metrics-address. The daemon is found"
        " through its configuration: --config, LAZY2DFS_ADDRESS, or the default.",
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON document")
    parser.add_argument(
        "--health",
        action="store_true",
        help="only ask the control socket's /healthz: print the reason, exit 0 if healthy,"
        " 1 if not (a probe for kubelet's exec probes, needing no network)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--metrics-address", metavar="HOST:PORT", help="ask the daemon's metrics address instead"
    )
    where.add_argument(
        "--config",
        type=Path,
        help=f"the daemon's TOML configuration (default {DEFAULT_CONFIG_PATH})",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Here, not above: every command's parser is built at each start (http.client, ~0.1 s).
    from lazy2dfs.status import ControlClient

    if args.health:
        if args.metrics_address is not None:
            args.command_parser.error("--health asks the control socket: drop --metrics-address")
        healthy, reason = ControlClient(
            daemon_control_address(args.config), timeout=HEALTH_TIMEOUT
        ).health()
        print(
            reason if healthy else f"unhealthy: {reason}",
            file=sys.stdout if healthy else sys.stderr,
        )
        return 0 if healthy else 1
    report = read_status(args.config, args.metrics_address)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        render(report, sys.stdout)
    return 0


def read_status(config_path: Path | None, metrics_address: str | None) -> StatusReport:
    """The daemon's report: from ``metrics_address`` when given, else over the control socket,
    else over the metrics address its configuration names."""
    from lazy2dfs import config
    from lazy2dfs.status import ControlClient

    if metrics_address is not None:
        address = config.load(config_path, overrides={"metrics_address": metrics_address})
        assert address.metrics_host_port is not None
        return fetch_status(*address.metrics_host_port)
    cfg = config.load(config_path)
    try:
        return ControlClient(cfg.control_address).status()
    except (UnavailableError, FailedPreconditionError) as exc:
        if cfg.metrics_host_port is not None:
            return fetch_status(*cfg.metrics_host_port)
        if isinstance(exc, FailedPreconditionError):
            raise FailedPreconditionError(
                f"{exc}, or set metrics_address in the daemon's configuration and pass"
                " --metrics-address HOST:PORT"
            ) from exc
        raise


def fetch_status(host: str, port: int) -> StatusReport:
    import urllib.error  # here: the other commands start without it
    import urllib.request

    host = _WILDCARDS.get(host, host)
    url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return cast("StatusReport", json.load(response))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UnavailableError(
            f"no lazy2dfs status at {url}: {exc}; is the daemon running with this metrics_address?"
        ) from exc


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def short_digest(digest: str) -> str:
    """12 hex digits, as container tools show digests."""
    return digest.removeprefix("sha256:")[:12]


def short_image(reference: str) -> str:
    """``repository:tag`` (with partitions), or ``repository@`` and a digest prefix: what tells
    images apart on one node, without the registry host and the pinned digest."""
    from lazy2dfs.registry_client import InvalidReferenceError, parse_reference

    try:
        ref = parse_reference(reference)
    except (InvalidReferenceError, Lazy2dfsError):
        return reference
    if ref.tag:
        return f"{ref.repository}:{ref.tag}" + "".join(f"--{p}" for p in ref.partitions)
    if ref.digest:
        return f"{ref.repository}@{short_digest(ref.digest)}"
    return ref.repository


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _table(rows: list[list[str]], out: TextIO, right: frozenset[int] = frozenset()) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)


def _health(report: StatusReport) -> str:
    if not report["healthy"]:
        return f"UNHEALTHY: {report['health']}"
    if report["health"].startswith("degraded:"):
        return "DEGRADED:" + report["health"].removeprefix("degraded:")
    return "healthy"


def render(report: StatusReport, out: TextIO) -> None:
    """The report as a few lines and narrow tables for people."""
    print(
        f"lazy2dfs {report['version']}  pid {report['pid']}"
        f"  up {_duration(report['uptime_seconds'])}  config {report['config_digest']}"
        f"  {_health(report)}",
        file=out,
    )
    cache = report["cache"]
    used = 100.0 * cache["bytes"] / cache["limit_bytes"] if cache["limit_bytes"] else 0.0
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report["snapshots"].items()))
    print(
        f"cache {human_bytes(cache['bytes'])} of {human_bytes(cache['limit_bytes'])}"
        f" ({used:.0f}%), {cache['layers']} layers; snapshots {kinds}",
        file=out,
    )
    print(file=out)
    if report["layers"]:
        rows = [["IMAGE", "LAYER", "SIZE", "STATE", "CACHED", "FETCHED", "RATE", "SERVED"]]
        for layer in report["layers"]:
            rows.append(
                [
                    short_image(layer["image"]),
                    short_digest(layer["layer"]),
                    human_bytes(layer["size"]),
                    layer["state"],
                    f"{layer['cached_percent']:.0f}%",
                    human_bytes(layer["fetched"]),
                    f"{human_bytes(layer['fetch_rate'])}/s",
                    human_bytes(layer["served"]),
                ]
            )
        _table(rows, out, right=frozenset({2, 4, 5, 6, 7}))
        print(
            "(CACHED: on disk, whenever fetched; FETCHED: from the registry since the start)",
            file=out,
        )
    else:
        print("no remote layers mounted", file=out)
    for registry in report["registries"]:
        if registry["failing_since"]:
            state = f"failing since {_when(registry['failing_since'])}"
        else:
            state = f"answering again (last failure {_when(registry['last_failure'])})"
        print(
            f"\nregistry {registry['host']}: {state}, {registry['failures']} failed attempts;"
            f" last error: {registry['last_error']}",
            file=out,
        )
    _render_fallbacks(report, out)


def _render_fallbacks(report: StatusReport, out: TextIO) -> None:
    fallbacks = report["fallbacks"]
    counts = [f"{n} {reason}" for reason, n in sorted(fallbacks["by_reason"].items())]
    plain = [f"{n} {reason}" for reason, n in sorted(fallbacks["plain"].items())]
    if counts:
        print(f"\nfallbacks since start: {', '.join(counts)}", file=out)
    if plain:
        print(
            f"layers downloaded by design since start: {', '.join(plain)}"
            " (not in a lazy format; `lazy2dfs convert` makes them lazy)",
            file=out,
        )
    recent = [f for f in fallbacks["recent"] if not f.get("by_design")]
    if recent:
        print("recent fallbacks, newest first:", file=out)
        for item in reversed(recent):
            print(
                f"  {_when(float(item['time']))}  {short_image(str(item['image']))}"
                f"  {short_digest(str(item['layer']))}  {item['reason']}: {item['detail']}",
                file=out,
            )
