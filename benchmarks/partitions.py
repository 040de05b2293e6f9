"""What a 2DFS partition saves: a node that serves rows x1..x2 of a model pulls and reads only
those allotments. One 2DFS image of ROWS allotments (ROW_MIB each, random bytes) is built with
``lazy2dfs build``; each trial starts a fresh containerd and daemon, pulls a partition with
``lazy2dfs pull REF--x1.0.x2.0``, reads every weight file a container sees, and counts the
bytes the registry served. The baseline is the whole field, ``REF--0.0.<ROWS-1>.0``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks import report
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.localstack.containerd import LocalContainerd
from lazy2dfs.localstack.images import build_image, build_layer, push_image
from lazy2dfs.localstack.model import runtime_tree
from lazy2dfs.localstack.process import lazy2dfs_argv
from lazy2dfs.localstack.registry import LocalRegistry
from lazy2dfs.localstack.snapshotter import LocalSnapshotter
from lazy2dfs.registry_client import RegistryClient

ROWS = 4
ROW_MIB = 128
TRIALS = 3
PARTITIONS = {"1 row": (1, 1), "2 rows": (1, 2), f"all {ROWS} rows": (0, ROWS - 1)}


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def _build(registry: LocalRegistry, work: Path) -> str:
    base = f"{registry.host}/bench/base:v1"
    image = build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))])

    async def upload() -> None:
        async with RegistryClient(plain_http=True) as client:
            await push_image(client, base, image)

    trio.run(upload)
    allotments = []
    for row in range(ROWS):
        (work / f"row{row}.bin").write_bytes(os.urandom(ROW_MIB << 20))
        allotments.append(
            {"src": f"row{row}.bin", "dst": f"/model/row{row}.bin", "row": row, "col": 0}
        )
    (work / "2dfs.json").write_text(json.dumps({"allotments": allotments}))
    target = f"{registry.host}/bench/field:v1"
    _run(
        [
            *lazy2dfs_argv(),
            "build",
            "-q",
            "-f",
            str(work / "2dfs.json"),
            "--cache-dir",
            str(work / "cache"),
            "--push",
            "--plain-http",
            base,
            target,
        ]
    )
    return target


def _trial(work: Path, registry: LocalRegistry, ref: str) -> dict[str, float]:
    try:
        with (
            LocalSnapshotter(work / "s", log_level="warning") as daemon,
            LocalContainerd(work / "c", daemon.address) as containerd,
        ):
            before = sum(r.size for r in registry.requests() if r.method == "GET")
            pulled = _run(
                [*lazy2dfs_argv(), "pull", "--containerd-address", str(containerd.address), ref]
            )
            read = _run(
                [
                    "ctr",
                    "--address",
                    str(containerd.address),
                    "run",
                    "--rm",
                    "--snapshotter",
                    "lazy2dfs",
                    ref,
                    "bench",
                    "/bin/sh",
                    "-c",
                    "cat /model/* > /dev/null",
                ]
            )
            fetched = sum(r.size for r in registry.requests() if r.method == "GET") - before
        return {"pull": pulled, "read": read, "fetched_mib": fetched / 2**20}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run() -> Path:
    raw: dict[str, list[dict[str, float]]] = {name: [] for name in PARTITIONS}
    with tempfile.TemporaryDirectory(prefix="l2d-part-") as tmp:
        work = Path(tmp)
        with LocalRegistry(work / "registry") as registry:
            target = _build(registry, work)
            for trial in range(TRIALS):
                for name, (first, last) in PARTITIONS.items():
                    ref = f"{target}--{first}.0.{last}.0"
                    raw[name].append(_trial(work / f"{trial}-{first}-{last}", registry, ref))
    whole = f"all {ROWS} rows"
    med = {n: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for n, ts in raw.items()}
    base_total = med[whole]["pull"] + med[whole]["read"]
    rows: list[list[Any]] = []
    for name, m in med.items():
        total = m["pull"] + m["read"]
        rows.append([name, m["pull"], m["read"], total, base_total / total, m["fetched_mib"]])
    return report.write(
        "partitions",
        f"2DFS partitions of a {ROWS}x{ROW_MIB} MiB model: seconds and MiB fetched"
        f" (median of {TRIALS})",
        ["partition", "pull", "read all it sees", "total", "speed-up vs all rows", "MiB fetched"],
        rows,
        raw,
        {name: {"pull + read": m["pull"] + m["read"]} for name, m in med.items()},
        "seconds",
    )
