"""``lazy2dfs status``: what the running daemon serves, read from its ``/status`` endpoint.

It asks over HTTP rather than opening the daemon's root, so it needs no privileges and shows
the live numbers (fetch progress and rate, cache use, recent fallbacks) only the daemon has.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO, cast

from lazy2dfs import config
from lazy2dfs.errors import FailedPreconditionError, UnavailableError
from lazy2dfs.progress import human_bytes
from lazy2dfs.status import StatusReport

TIMEOUT = 10.0
# Wildcard binds are reached on loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the ``status`` command to the CLI's ``subparsers``."""
    parser = subparsers.add_parser(
        "status",
        help="show the running daemon's remote layers, cache and recent fallbacks",
        description="Reads /status from the daemon's metrics address (metrics_address in its"
        " configuration, or --metrics-address).",
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON as is")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--metrics-address", metavar="HOST:PORT", help="the daemon's address")
    where.add_argument(
        "--config",
        type=Path,
        help=f"the daemon's TOML configuration (default {config.DEFAULT_CONFIG_PATH})",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, overrides={"metrics_address": args.metrics_address})
    address = cfg.metrics_host_port
    if address is None:
        raise FailedPreconditionError(
            "the daemon serves no status: set metrics_address in its configuration,"
            " or pass --metrics-address HOST:PORT"
        )
    report = fetch_status(*address)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        render(report, sys.stdout)
    return 0


def fetch_status(host: str, port: int) -> StatusReport:
    host = _WILDCARDS.get(host, host)
    url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return cast(StatusReport, json.load(response))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UnavailableError(f"no lazy2dfs status at {url}: {exc}") from exc


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _short(digest: str) -> str:
    return digest[:19]  # sha256: and 12 hex digits, as container tools show them


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)), file=out
        )


def render(report: StatusReport, out: TextIO) -> None:
    """The report as a few lines and tables for people."""
    health = "healthy" if report["healthy"] else f"UNHEALTHY: {report['health']}"
    print(
        f"lazy2dfs {report['version']}  pid {report['pid']}"
        f"  up {_duration(report['uptime_seconds'])}  config {report['config_digest']}  {health}",
        file=out,
    )
    cache = report["cache"]
    used = 100.0 * cache["bytes"] / cache["limit_bytes"] if cache["limit_bytes"] else 0.0
    print(
        f"cache: {human_bytes(cache['bytes'])} of {human_bytes(cache['limit_bytes'])}"
        f" ({used:.0f}%), {cache['layers']} layers",
        file=out,
    )
    kinds = report["snapshots"]
    print("snapshots: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())), file=out)
    print(file=out)
    if report["layers"]:
        rows = [["IMAGE", "LAYER", "SIZE", "FETCHED", "RATE", "SERVED"]]
        for layer in report["layers"]:
            rows.append(
                [
                    layer["image"],
                    _short(layer["layer"]),
                    human_bytes(layer["size"]),
                    f"{human_bytes(layer['fetched'])} ({layer['fetched_percent']:.0f}%)",
                    f"{human_bytes(layer['fetch_rate'])}/s",
                    human_bytes(layer["served"]),
                ]
            )
        _table(rows, out)
    else:
        print("no remote layers mounted", file=out)
    fallbacks = report["fallbacks"]
    if fallbacks["by_reason"]:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(fallbacks["by_reason"].items()))
        print(f"\nfallbacks since start: {counts}", file=out)
    if fallbacks["recent"]:
        rows = [["TIME", "IMAGE", "LAYER", "REASON"]]
        for item in reversed(fallbacks["recent"]):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(item["time"])))
            rows.append([when, str(item["image"]), _short(str(item["layer"])), str(item["reason"])])
        print("recent fallbacks, newest first:", file=out)
        _table(rows, out)
