"""How much sooner a model container reads its weights with lazy2dfs than after a full pull.

Per model size, the same bf16-like weights (4 safetensors files, one layer each) are pushed
twice: as plain tar.gz (what containerd's overlayfs pulls today) and as eStargz (what lazy2dfs
mounts lazily). Each trial starts a fresh containerd and lazy2dfs daemon — empty content store,
empty chunk cache, page cache dropped — and runs ``benchmarks.coldstart``:

* first tensor: pull, then a container reading the first MiB of the first file;
* full load: pull, then a container reading every file to the end;
* bytes the registry served, and the lazy2dfs daemon's CPU seconds and peak RSS.

The loopback set has no network cost at all; the emulated set puts ``devstack.link`` (1
Gbit/s, 20 ms round trip) between containerd/lazy2dfs and the registry.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.coldstack import (
    EMULATED,
    LINK_BYTES_PER_SECOND,
    LOOPBACK,
    cold_stack,
    daemon_usage,
    registry_host,
)
from benchmarks.coldstart import METHODS, cold_start
from devstack.images import BuiltImage, build_image, build_layer
from devstack.model import runtime_tree, sample_model
from devstack.registry import LocalRegistry, Served
from lazy2dfs.estargz import WriterOptions

# (size MiB, trials on loopback, trials on the emulated link)
PLAN = ((256, 3, 1), (1024, 3, 2), (4096, 1, 1))
FIRST_BYTES = 1 << 20
ESTARGZ = WriterOptions(chunk_size=4 << 20, mtime=946684800)


def _images(size_mib: int) -> tuple[dict[str, BuiltImage], str]:
    model = sample_model(size_mib)
    plain = [runtime_tree(), *({path: data} for path, data in sorted(model.files.items()))]
    lazy = [build_layer(runtime_tree(), estargz=ESTARGZ)] + [
        build_layer({path: data}, estargz=ESTARGZ) for path, data in sorted(model.files.items())
    ]
    return {"overlayfs": build_image(plain), "lazy2dfs": build_image(lazy)}, model.paths[0]


def _trial(
    work: Path, registry: LocalRegistry, host: str, repo: str, method: str, first_file: str
) -> dict[str, float]:
    with cold_stack(work) as (daemon, containerd):
        served = Served(registry)
        result = cold_start(containerd, f"{host}/{repo}:{method}", method, first_file, FIRST_BYTES)
        assert daemon.process is not None
        cpu, rss = daemon_usage(daemon.process.pid)
        return {
            "first_tensor": result.to_first_tensor,
            "full_load": result.full_load,
            "fetched_mib": served.bytes() / 2**20,
            "daemon_cpu_s": cpu,
            "daemon_rss_mib": rss,
        }


def run() -> Path:
    raw: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="l2d-start-") as tmp:
        work = Path(tmp)
        with LocalRegistry(work / "registry") as registry:
            for size_mib, loopback_trials, link_trials in PLAN:
                images, first_file = _images(size_mib)
                repo = f"bench/model-{size_mib}m"

                for method, image in images.items():
                    registry.push(f"{repo}:{method}", image)
                compressed = {
                    m: sum(len(layer.blob.data) for layer in image.layers)
                    for m, image in images.items()
                }
                del images
                for link, trials in ((LOOPBACK, loopback_trials), (EMULATED, link_trials)):
                    if not trials:
                        continue
                    key = f"{size_mib} MiB, {link}"
                    raw[key] = {"compressed_mib": {m: c / 2**20 for m, c in compressed.items()}}
                    for trial in range(trials):
                        for method in METHODS:
                            where = work / f"{size_mib}-{trial}-{method}"
                            with registry_host(registry, link) as host:
                                result = _trial(where, registry, host, repo, method, first_file)
                            raw[key].setdefault(method, []).append(result)
    return _report(raw)


def _report(raw: dict[str, dict[str, Any]]) -> Path:
    rows: list[list[Any]] = []
    plot: dict[str, dict[str, float]] = {}
    for key, trials in raw.items():
        med = {
            m: {k: statistics.median(t[k] for t in trials[m]) for k in trials[m][0]}
            for m in METHODS
        }
        base, ours = med["overlayfs"], med["lazy2dfs"]
        ideal = ""
        if key.endswith(EMULATED):
            seconds = trials["compressed_mib"]["lazy2dfs"] * 2**20 / LINK_BYTES_PER_SECOND
            ideal = f"{ours['full_load'] / seconds:.2f}x of {seconds:.1f}s"
        rows.append(
            [
                key,
                base["first_tensor"],
                ours["first_tensor"],
                base["full_load"],
                ours["full_load"],
                base["full_load"] / ours["full_load"],
                base["fetched_mib"],
                ours["fetched_mib"],
                ours["daemon_cpu_s"],
                ours["daemon_rss_mib"],
                ideal,
            ]
        )
        plot[f"{key}: first tensor"] = {m: med[m]["first_tensor"] for m in METHODS}
        plot[f"{key}: full load"] = {m: med[m]["full_load"] for m in METHODS}
    return report.write(
        "model_start",
        "Model container cold start: overlayfs on plain tar.gz against lazy2dfs on eStargz"
        " (seconds, medians)",
        [
            "model, link",
            "overlayfs first tensor",
            "lazy2dfs first tensor",
            "overlayfs full load",
            "lazy2dfs full load",
            "full load speed-up",
            "overlayfs MiB fetched",
            "lazy2dfs MiB fetched",
            "lazy2dfs daemon CPU s",
            "lazy2dfs daemon peak RSS MiB",
            "lazy2dfs full load vs bytes/link rate",
        ],
        rows,
        raw,
        plot,
        "seconds",
    )
