"""How much sooner a model container reads its weights with lazy2dfs than after a full pull.

For each model size, one image (static busybox + a safetensors file of random float16 tensors,
incompressible like trained weights) is pushed as eStargz to a local registry. Each trial starts
a fresh containerd and lazy2dfs daemon (empty content store, empty chunk cache) and runs
``lazy2dfs.localstack.coldstart``: pull, a container reading the first tensor, a container
reading every byte. The baseline is containerd's own path on the same image: ``ctr images
pull`` onto overlayfs (download and unpack everything), then the same containers.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import trio

from benchmarks import report
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.localstack.coldstart import METHODS, ColdStart, cold_start
from lazy2dfs.localstack.containerd import LocalContainerd
from lazy2dfs.localstack.images import build_image, build_layer, push_image
from lazy2dfs.localstack.model import WEIGHTS_PATH, runtime_tree, sample_model
from lazy2dfs.localstack.registry import LocalRegistry
from lazy2dfs.localstack.snapshotter import LocalSnapshotter
from lazy2dfs.registry_client import RegistryClient

SIZES_MIB = (64, 256, 1024)
TRIALS = 3
ESTARGZ = WriterOptions(chunk_size=4 << 20, mtime=946684800)


def _push(registry: LocalRegistry, size_mib: int) -> tuple[str, int]:
    model = sample_model(size_mib)
    image = build_image(
        [
            build_layer(runtime_tree(), estargz=ESTARGZ),
            build_layer({WEIGHTS_PATH: model.safetensors}, estargz=ESTARGZ),
        ]
    )
    ref = f"{registry.host}/bench/model-{size_mib}m:v1"

    async def upload() -> None:
        async with RegistryClient(plain_http=True) as client:
            await push_image(client, ref, image)

    trio.run(upload)
    return ref, model.first_tensor_end


def _trial(work: Path, ref: str, method: str, first_tensor_end: int) -> ColdStart:
    try:
        with (
            LocalSnapshotter(work / "s", log_level="warning") as daemon,
            LocalContainerd(work / "c", daemon.address) as containerd,
        ):
            return cold_start(containerd, ref, method, first_tensor_end, "bench")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run() -> Path:
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="l2d-start-") as tmp:
        work = Path(tmp)
        with LocalRegistry(work / "registry") as registry:
            for size_mib in SIZES_MIB:
                ref, first_tensor_end = _push(registry, size_mib)
                trials = raw.setdefault(f"{size_mib} MiB", {m: [] for m in METHODS})
                for trial in range(TRIALS):
                    for method in METHODS:
                        result = _trial(work / f"{trial}-{method}", ref, method, first_tensor_end)
                        trials[method].append(
                            {
                                "pull": result.pull,
                                "first_tensor": result.to_first_tensor,
                                "full_read": result.full_read,
                            }
                        )

    rows: list[list[Any]] = []
    plot: dict[str, dict[str, float]] = {}
    for size, trials in raw.items():
        med = {
            m: {k: statistics.median(t[k] for t in trials[m]) for k in trials[m][0]}
            for m in METHODS
        }
        base, ours = med["overlayfs"], med["lazy2dfs"]
        rows.append(
            [
                size,
                base["first_tensor"],
                ours["first_tensor"],
                base["first_tensor"] / ours["first_tensor"],
                base["full_read"],
                ours["full_read"],
                (base["first_tensor"] + base["full_read"])
                / (ours["first_tensor"] + ours["full_read"]),
            ]
        )
        plot[f"{size} to first tensor"] = {m: med[m]["first_tensor"] for m in METHODS}
        plot[f"{size} reading all"] = {m: med[m]["full_read"] for m in METHODS}
    return report.write(
        "model_start",
        f"Model container cold start, seconds (median of {TRIALS})",
        [
            "model",
            "overlayfs: pull + first tensor",
            "lazy2dfs: pull + first tensor",
            "speed-up to first tensor",
            "overlayfs: read all (after pull)",
            "lazy2dfs: read all (cold)",
            "speed-up overall",
        ],
        rows,
        raw,
        plot,
        "seconds",
    )
