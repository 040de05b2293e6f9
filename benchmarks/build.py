"""`lazy2dfs build` speed: a 1 GiB model in 4 allotments against `gzip -6` of the same bytes,
and a rebuild after one allotment changed against the first build.

The first build encodes four eStargz allotments (two at a time, compression on both cores)
and pushes them to a local registry; `gzip -6` is what `docker build` + push of the same
weights as one tar.gz layer would spend compressing. The rebuild changes one shard: the
others come from the allotment cache and are already in the registry.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from devstack.images import build_image, build_layer
from devstack.model import bf16_like, runtime_tree
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from lazy2dfs.estargz import WriterOptions

SHARDS = 4
SHARD_MIB = 256


def _timed(argv: list[str], **kwargs: Any) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=1800, **kwargs)
    return time.perf_counter() - start


def run() -> Path:
    with tempfile.TemporaryDirectory(prefix="l2d-build-") as tmp:
        work = Path(tmp)
        allotments = []
        for row in range(SHARDS):
            (work / f"shard{row}.bin").write_bytes(bf16_like(SHARD_MIB << 20, seed=row))
            allotments.append(
                {"src": f"shard{row}.bin", "dst": f"/model/shard{row}.bin", "row": row, "col": 0}
            )
        (work / "2dfs.json").write_text(json.dumps({"allotments": allotments}))
        subprocess.run(
            ["tar", "-cf", "model.tar", *(f"shard{r}.bin" for r in range(SHARDS))],
            cwd=work,
            check=True,
        )
        gzip_seconds = _timed(["sh", "-c", "gzip -6 -c model.tar > model.tar.gz"], cwd=work)
        with LocalRegistry(work / "registry") as registry:
            base = registry.push(
                "bench/runtime:v1",
                build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))]),
            )
            build = [
                *lazy2dfs_argv(), "build", "-q", "-f", str(work / "2dfs.json"),
                "--cache-dir", str(work / "cache"), "--push", base,
            ]  # fmt: skip
            first = _timed([*build, f"{registry.host}/bench/llm:v1"])
            shard = work / "shard2.bin"
            data = bytearray(shard.read_bytes())
            data[-4096:] = bf16_like(4096, seed=99)
            shard.write_bytes(bytes(data))
            rebuild = _timed([*build, f"{registry.host}/bench/llm:v2"])
    total_mib = SHARDS * SHARD_MIB
    timings = {
        "gzip -6 (one tar.gz, compress only)": gzip_seconds,
        "lazy2dfs build (4 eStargz allotments, pushed)": first,
        "lazy2dfs rebuild, one allotment changed": rebuild,
    }
    rows: list[list[Any]] = [
        [what, seconds, total_mib / seconds, gzip_seconds / seconds]
        for what, seconds in timings.items()
    ]
    return report.write(
        "build",
        f"Building a {total_mib} MiB bf16-like model in {SHARDS} allotments"
        f" (rebuild / first build = {rebuild / first:.2f})",
        ["what", "seconds", "MiB/s", "speed-up vs gzip -6"],
        rows,
        {"gzip_seconds": gzip_seconds, "first_build": first, "rebuild": rebuild},
        {"seconds": {what.split(" (")[0]: seconds for what, seconds in timings.items()}},
        "seconds",
    )
