"""How long a lazily served layer is served before its diff ID is checked (docs/security.md).

Until every byte of a layer has arrived and its tar stream hashed to the diff ID its image's
config names, containerd could, within one namespace, hand the layer to another image that
claims the same diff ID. This measures that window as a user would meet it: a fresh daemon,
``lazy2dfs pull`` of a one-layer model image, nobody reading; from the daemon's log, the time
from the layer's lazy mount to its verification, for model sizes on loopback and on an emulated
1 Gbit/s 20 ms link, beside the time the link alone needs for the blob.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks import report
from benchmarks.coldstack import EMULATED, LINK_BYTES_PER_SECOND, LOOPBACK, registry_host
from devstack.containerd import LocalContainerd
from devstack.images import build_image, build_layer
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.estargz import Compression, WriterOptions

SIZES_MIB = (256, 1024)
VERIFIED_TIMEOUT = 900.0
_EVENT = re.compile(r'^time=(\S+) .*event="(layer mounted lazily|layer verified)" layer=(\S+)')


def _events(log: Path, layer: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _EVENT.match(line)
        if match and match.group(3) == layer:
            found[match.group(2)] = datetime.fromisoformat(match.group(1)).timestamp()
    return found


def _trial(registry: LocalRegistry, work: Path, size_mib: int, link: str) -> dict[str, float]:
    weights = os.urandom(size_mib << 20)  # incompressible, like weights
    layer = build_layer(
        {"model/weights.bin": weights}, estargz=WriterOptions(compression=Compression.ZSTD)
    )
    image = build_image([layer])
    name = f"window/m{size_mib}:{link.split()[0]}"
    registry.push(name, image)
    with (
        registry_host(registry, link) as host,
        LocalSnapshotter(work / "s", log_level="info") as daemon,
        LocalContainerd(work / "c", daemon.address) as containerd,
    ):
        containerd.lazy_pull(f"{host}/{name}")
        log = daemon.workdir / "lazy2dfs.log"
        deadline = time.monotonic() + VERIFIED_TIMEOUT
        while "layer verified" not in (events := _events(log, layer.blob.digest)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{size_mib} MiB over {link}: never verified")
            time.sleep(0.1)
    window = events["layer verified"] - events["layer mounted lazily"]
    return {
        "blob_mib": len(layer.blob.data) / 2**20,
        "window_s": window,
        "link_floor_s": len(layer.blob.data) / LINK_BYTES_PER_SECOND if link == EMULATED else 0.0,
    }


def run() -> Path:
    rows: list[list[object]] = []
    raw: dict[str, dict[str, float]] = {}
    plot: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="l2d-window-") as tmp,
        LocalRegistry(Path(tmp) / "registry") as registry,
    ):
        for size in SIZES_MIB:
            for link in (LOOPBACK, EMULATED):
                result = _trial(registry, Path(tmp) / f"{size}-{link.split()[0]}", size, link)
                key = f"{size} MiB, {link}"
                raw[key] = result
                rows.append(
                    [
                        f"{size} MiB",
                        link,
                        f"{result['blob_mib']:.0f}",
                        f"{result['window_s']:.1f}",
                        f"{result['link_floor_s']:.1f}" if result["link_floor_s"] else "",
                    ]
                )
                plot[key] = {"lazy mount → diff ID verified (s)": result["window_s"]}
    return report.write(
        "verify_window",
        "Window between a layer's lazy mount and its diff ID check (nobody reading)",
        ["model", "link", "blob MiB", "window s", "link alone s"],
        rows,
        raw,
        plot,
        "seconds",
    )
