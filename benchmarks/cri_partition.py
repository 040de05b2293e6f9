"""A 2DFS partition's model ready through CRI, the way kubelet pulls (PullImage, through the
daemon's partition mirror named in hosts.toml), against ``lazy2dfs pull`` and against
overlayfs on the same partition, in one run.

Each model is pushed twice: as ``lazy2dfs build`` makes it (zstd:chunked allotments) for the two
lazy paths, and in the stock 2DFS builder's layout (tar.gz allotments) for overlayfs, which
``ctr images pull --hosts-dir`` downloads in full through the same mirror (the image the 2DFS
registry would serve). Models: the real all-MiniLM-L6-v2 split by encoder layer into 6 rows
(``lazy2dfs field from-safetensors``), partitions rows 2-3 (a middle stage) and rows 0-2 (the
first half, with the embeddings); and a 1 GiB sample model in 4 rows, partition rows 0-1.

Every trial is cold (``benchmarks.coldstack``), on loopback and on an emulated 1 Gbit/s 20 ms
link. *Ready* is pull start until a container has read every file of the partition; bytes
fetched are what the registry served.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from benchmarks import report
from benchmarks.coldstack import EMULATED, LOOPBACK, cold_stack, registry_host
from benchmarks.coldstart import CRI, pull, read_all
from devstack.images import build_2dfs_image, build_image, build_layer, stock_2dfs_image
from devstack.model import real_model, runtime_tree, sample_model
from devstack.registry import LocalRegistry, Served
from lazy2dfs.errors import Lazy2dfsError
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.tdfs import split_safetensors

TRIALS = 3
CHUNK = 4 << 20
METHODS = {
    CRI: "CRI via the mirror (kubelet)",
    "lazy2dfs": "lazy2dfs pull",
    "overlayfs": "overlayfs, partition (ctr via the mirror)",
}


@dataclass(frozen=True)
class Model:
    name: str
    rows: tuple[Mapping[str, bytes], ...]  # per field row: path in the image → bytes
    partitions: tuple[tuple[int, int], ...]  # (first row, last row)

    def files(self, first: int, last: int) -> list[str]:
        """The partition's weights files, in row order (an index file is read too)."""
        return [path for row in self.rows[first : last + 1] for path in sorted(row)]

    def weights(self, first: int, last: int) -> int:
        return sum(len(data) for row in self.rows[first : last + 1] for data in row.values())


def _real(work: Path) -> Model:
    split = split_safetensors([real_model()], 6, work / "split")
    index = split.index.read_bytes()
    rows = tuple(
        {f"model/{group.path.name}": group.path.read_bytes(), "model/" + split.index.name: index}
        for group in split.rows
    )
    shutil.rmtree(work / "split")
    return Model("all-MiniLM-L6-v2 (87 MiB)", rows, ((2, 3), (0, 2)))


def _sample() -> Model:
    model = sample_model(1024, files=4, layers=8)
    rows = tuple({path: model.files[path]} for path in model.paths)
    return Model("sample, 1 GiB", rows, ((0, 1),))


@dataclass(frozen=True)
class Pushed:
    lazy: str  # repository:tag of the lazy2dfs build image, on the registry
    stock: str  # of the stock-layout one


def _push(registry: LocalRegistry, work: Path, model: Model, slug: str) -> Pushed:
    runtime = build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))])
    base = registry.push(f"bench/{slug}-base:v1", runtime)
    build_2dfs_image(work, base, f"{registry.host}/bench/{slug}:lazy", model.rows, CHUNK)
    registry.push(f"bench/{slug}:stock", stock_2dfs_image([runtime_tree()], model.rows))
    return Pushed(f"bench/{slug}:lazy", f"bench/{slug}:stock")


def _trial(
    work: Path, registry: LocalRegistry, host: str, method: str, ref: str, files: Sequence[str]
) -> dict[str, Any]:
    """The trial's figures, or ``{"error": …}``: a failed trial is counted and shown, not
    dropped, and does not end the run."""
    mirror = [host] if method != "lazy2dfs" else []
    with cold_stack(work, cri=method == CRI, mirror_for=mirror) as stack:
        containerd = stack.containerd
        served = Served(registry)
        try:
            pulled = pull(containerd, ref, method)
            ready = pulled + read_all(containerd, ref, method, files)
        except (RuntimeError, Lazy2dfsError, grpc.RpcError) as err:
            return {"error": str(err).strip().splitlines()[-1]}
        return {"pull": pulled, "ready": ready, "fetched": served.bytes()}


def run() -> Path:
    raw: dict[str, Any] = {"trials": {}, "weights": {}}
    with tempfile.TemporaryDirectory(prefix="l2d-cri-") as tmp:
        for slug in ("minilm", "sample"):
            model = _real(Path(tmp)) if slug == "minilm" else _sample()
            work = Path(tmp) / slug
            (work / "build").mkdir(parents=True)
            with LocalRegistry(work / "registry") as registry:
                pushed = _push(registry, work / "build", model, slug)
                for first, last in model.partitions:
                    part = f"{model.name}, rows {first}-{last}"
                    raw["weights"][part] = model.weights(first, last)
                    files = model.files(first, last)
                    suffix = f"--{first}.0.{last}.0"
                    for link in (LOOPBACK, EMULATED):
                        cells: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
                        raw["trials"][f"{part}, {link}"] = cells
                        for trial in range(TRIALS):
                            for method in METHODS:
                                image = pushed.stock if method == "overlayfs" else pushed.lazy
                                with registry_host(registry, link) as host:
                                    measured = _trial(
                                        work / f"{method}-{trial}",
                                        registry,
                                        host,
                                        method,
                                        f"{host}/{image}{suffix}",
                                        files,
                                    )
                                cells[method].append(measured)
            shutil.rmtree(work, ignore_errors=True)
    return _report(raw)


def _report(raw: dict[str, Any]) -> Path:
    rows: list[list[Any]] = []
    groups: dict[str, dict[str, dict[str, float]]] = {}
    errors: set[str] = set()
    for key, cells in raw["trials"].items():
        part, link = key.rsplit(", ", 1)
        medians = {method: _medians(trials) for method, trials in cells.items()}
        for method, label in METHODS.items():
            cell = medians[method]
            failed = [t["error"] for t in cells[method] if "error" in t]
            errors.update(f"{label}: {error}" for error in failed)
            rows.append(
                [
                    part,
                    link,
                    label,
                    cell["pull"],
                    cell["ready"],
                    cell["fetched"] / 2**20,
                    raw["weights"][part] / 2**20,
                    f"{len(failed)} of {len(cells[method])}",
                ]
            )
        groups[key] = medians
    columns = [
        "model, partition",
        "link",
        "how",
        "pull s",
        "ready s",
        "MiB fetched",
        "partition weights MiB",
        "trials failed",
    ]
    title = "A 2DFS partition's model ready: CRI via the mirror, lazy2dfs pull, overlayfs"
    notes = [
        f"Medians of the successful ones of {TRIALS} cold trials per cell. *ready*: pull"
        " start until a container has read every file of the partition. *CRI*:"
        " `runtime.v1.ImageService/PullImage` as kubelet calls it, with the shipped hosts.toml"
        " naming the daemon's partition mirror, then containers in namespace k8s.io. *lazy2dfs"
        " pull*: the partition computed on the client. *overlayfs*: the stock-layout (tar.gz)"
        " image's partition, pulled in full by `ctr images pull --hosts-dir` through the same"
        " mirror. MiB fetched: everything the registry served. `lazy2dfs pull` is a Python"
        " process of its own (about half a second to start) that asks the registry one request"
        " at a time; CRI pulls inside containerd.",
    ]
    if errors:
        notes.append(
            "Failed trials (not in the medians): " + "; ".join(f"`{e}`" for e in sorted(errors))
        )
    report.write_tables("cri_partition", title, columns, rows, raw, notes)
    return report.save_figure("cri_partition", _figure(groups, title))


def _medians(trials: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per measure, the median of the trials that succeeded (NaN when none did)."""
    done = [t for t in trials if "error" not in t]
    measures = ("pull", "ready", "fetched")
    return {m: statistics.median(t[m] for t in done) if done else math.nan for m in measures}


def _figure(groups: Mapping[str, Mapping[str, Mapping[str, float]]], title: str) -> Figure:
    """Per model, partition and link: pull and ready, a bar per way of pulling."""
    fig, axes = plt.subplots(1, 2, figsize=(max(8, len(groups) * 1.6), 4.5))
    width = 0.8 / len(METHODS)
    measures = (("pull", "seconds to pull"), ("ready", "seconds until the model is read"))
    for ax, (measure, label) in zip(axes, measures, strict=True):
        for i, (method, name) in enumerate(METHODS.items()):
            xs = [g + i * width for g in range(len(groups))]
            heights = [cell[method][measure] for cell in groups.values()]
            ax.bar(xs, heights, width, label=name)
        ax.set_xticks([g + width * (len(METHODS) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels(list(groups), rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig
