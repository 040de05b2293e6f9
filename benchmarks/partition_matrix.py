"""What a node that serves part of a model gains from 2DFS partitions, and from loading them
lazily: the matrix of issue 5.

Per model size, the same bf16-like weights (4 safetensors files, one per field row) are pushed
three ways, and each partition (25, 50, 100 % = rows 0..0, 0..1, 0..3) is loaded three ways:

* overlayfs, whole image: the plain tar.gz image of the whole model, pulled by ``ctr`` onto
  containerd's overlayfs; the container reads only the partition's files.
* overlayfs, partition (2DFS without lazy loading): the image the 2DFS registry serves for
  ``REF--0.0.x2.0`` of a stock-layout field (plain tar.gz allotments) — computed with
  ``lazy2dfs.tdfs.partition_image``, pushed under a plain tag, pulled by ``ctr`` the same way.
* lazy2dfs, partition: ``lazy2dfs pull REF--0.0.x2.0`` of the eStargz image ``lazy2dfs build``
  made, on the lazy2dfs snapshotter.

Every trial is cold (``benchmarks.coldstack``). First tensor is pull start to the first MiB of
the partition's first file read in a container; full load is pull start to every file of the
partition read; bytes fetched are what the registry served. The whole-image pull does not
depend on the partition, so a whole-image trial pulls once and times one container per
partition after it. Images are built once per size, in a registry of their own.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from benchmarks import report
from benchmarks.coldstack import (
    EMULATED,
    LINK_BYTES_PER_SECOND,
    LOOPBACK,
    cold_stack,
    registry_host,
)
from benchmarks.coldstart import ColdStart, cold_start, pull, read_all, read_first
from benchmarks.tdfs_images import push_2dfs, push_stock
from devstack.images import build_image, build_layer
from devstack.model import runtime_tree, sample_model
from devstack.registry import LocalRegistry, Served
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.registry_client import (
    Partition,
)

# (model MiB, trials per link); 4 GiB once, so that the whole matrix fits in 45 minutes.
PLAN = ((256, 3), (1024, 3), (4096, 1))
ROWS = 4
PERCENTS = (25, 50, 100)
WHOLE, PLAIN, LAZY = (
    "overlayfs, whole image",
    "overlayfs, partition",
    "lazy2dfs, partition",
)
VARIANTS = (WHOLE, PLAIN, LAZY)
FIRST_BYTES = 1 << 20
REPO = "bench/model"
GOAL_LOAD, GOAL_BYTES = 1.2, 1.02


def _rows(percent: int) -> int:
    return ROWS * percent // 100


@dataclass(frozen=True)
class Pushed:
    """One model size in its registry: per row, the weights file and both allotment blobs."""

    files: tuple[str, ...]
    plain: tuple[tuple[str, int], ...]  # (digest, size) of the tar.gz allotments
    lazy: tuple[tuple[str, int], ...]  # (digest, size) of the eStargz allotments

    def partition_bytes(self, percent: int, lazy: bool) -> int:
        return sum(size for _, size in (self.lazy if lazy else self.plain)[: _rows(percent)])

    def partition_digests(self, percent: int, lazy: bool) -> set[str]:
        return {digest for digest, _ in (self.lazy if lazy else self.plain)[: _rows(percent)]}


def _push(registry: LocalRegistry, work: Path, size_mib: int) -> Pushed:
    """Builds and pushes the three images of one size."""
    model = sample_model(size_mib, files=ROWS, layers=2 * ROWS)
    files = tuple(model.paths)
    plain = _push_plain(registry, model.files, files)
    return Pushed(files, plain, _push_lazy(registry, work, model.files, files))


def _push_plain(
    registry: LocalRegistry, weights: Mapping[str, bytes], files: Sequence[str]
) -> tuple[tuple[str, int], ...]:
    """The whole tar.gz image, and per partition the image the 2DFS registry would serve for
    it; returns the tar.gz allotments."""
    partitions = {
        f"{REPO}:tar-gz-{percent}": [Partition(0, 0, _rows(percent) - 1, 0)] for percent in PERCENTS
    }
    return push_stock(registry, weights, files, f"{REPO}:whole", partitions)[0]


def _push_lazy(
    registry: LocalRegistry, work: Path, weights: Mapping[str, bytes], files: Sequence[str]
) -> tuple[tuple[str, int], ...]:
    """The eStargz 2DFS image, as ``lazy2dfs build`` makes it; returns its allotments."""
    runtime = build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))])
    base = registry.push("bench/base:v1", runtime)
    source = work / "build"
    return push_2dfs(
        registry, source, base, weights, files, f"{REPO}:2dfs", cache_root=source / "cache"
    )


def _measures(result: ColdStart, served: Served, digests: set[str]) -> dict[str, float]:
    return {
        "first_tensor": result.to_first_tensor,
        "full_load": result.full_load,
        "fetched": served.bytes(),
        "fetched_allotments": served.bytes(digests),
    }


def _whole_trial(
    work: Path, registry: LocalRegistry, host: str, pushed: Pushed
) -> dict[int, dict[str, float]]:
    """One cold pull of the whole image, then per partition a container reading its files."""
    ref = f"{host}/{REPO}:whole"
    with cold_stack(work) as stack:
        containerd = stack.containerd
        served = Served(registry)
        pulled = pull(containerd, ref, "overlayfs")
        results = {}
        for percent in PERCENTS:
            files = pushed.files[: _rows(percent)]
            first = read_first(containerd, ref, "overlayfs", files[0], FIRST_BYTES)
            full = read_all(containerd, ref, "overlayfs", files)
            result = ColdStart("overlayfs", pulled, first, full)
            results[percent] = _measures(
                result, served, pushed.partition_digests(percent, lazy=False)
            )
        return results


def _partition_trial(
    work: Path, registry: LocalRegistry, ref: str, method: str, digests: set[str], first: str
) -> dict[str, float]:
    with cold_stack(work) as stack:
        served = Served(registry)
        return _measures(
            cold_start(stack.containerd, ref, method, first, FIRST_BYTES), served, digests
        )


def run() -> Path:
    raw: dict[str, Any] = {"trials": {}, "partition_bytes": {}}
    png = Path()
    with tempfile.TemporaryDirectory(prefix="l2d-matrix-") as tmp:
        for size_mib, trials in PLAN:
            work = Path(tmp) / f"{size_mib}m"
            with LocalRegistry(work / "registry") as registry:
                pushed = _push(registry, work, size_mib)
                raw["partition_bytes"][f"{size_mib} MiB"] = {
                    f"{p} %": {
                        "tar.gz": pushed.partition_bytes(p, False),
                        "eStargz": pushed.partition_bytes(p, True),
                    }
                    for p in PERCENTS
                }
                for link in (LOOPBACK, EMULATED):
                    cells: dict[str, dict[str, list[dict[str, float]]]] = {
                        v: {f"{p} %": [] for p in PERCENTS} for v in VARIANTS
                    }
                    raw["trials"][f"{size_mib} MiB, {link}"] = cells
                    for trial in range(trials):
                        where = work / f"{link[:4]}-{trial}"
                        with registry_host(registry, link) as host:
                            whole = _whole_trial(where / "whole", registry, host, pushed)
                        for percent, measured in whole.items():
                            cells[WHOLE][f"{percent} %"].append(measured)
                        for percent in PERCENTS:
                            last = _rows(percent) - 1
                            for variant, method, ref, lazy in (
                                (PLAIN, "overlayfs", f"{REPO}:tar-gz-{percent}", False),
                                (LAZY, "lazy2dfs", f"{REPO}:2dfs--0.0.{last}.0", True),
                            ):
                                with registry_host(registry, link) as host:
                                    measured = _partition_trial(
                                        where / f"{method}-{percent}",
                                        registry,
                                        f"{host}/{ref}",
                                        method,
                                        pushed.partition_digests(percent, lazy),
                                        pushed.files[0],
                                    )
                                cells[variant][f"{percent} %"].append(measured)
            shutil.rmtree(work, ignore_errors=True)
            png = _report(raw)  # after each size, so an interrupted run still leaves results
    return png


Medians = dict[str, dict[str, dict[str, dict[str, float]]]]  # "size, link" → variant → "p %"


def _report(raw: dict[str, Any]) -> Path:
    medians: Medians = {
        key: {
            variant: {
                part: {m: statistics.median(t[m] for t in trials) for m in trials[0]}
                for part, trials in parts.items()
            }
            for variant, parts in cells.items()
        }
        for key, cells in raw["trials"].items()
    }
    rows: list[list[Any]] = []
    load_ratios: list[tuple[float, str]] = []
    byte_ratios: list[tuple[float, float, str]] = []
    for key, cells in medians.items():
        size, link = key.split(", ", 1)
        for percent in PERCENTS:
            part = f"{percent} %"
            lazy = cells[LAZY][part]
            partition = raw["partition_bytes"][size][part]["eStargz"]
            where = f"{size}, {link}, {part}"
            byte_ratios.append(
                (lazy["fetched"] / partition, lazy["fetched_allotments"] / partition, where)
            )
            ideal = ""
            if link == EMULATED:
                seconds = partition / LINK_BYTES_PER_SECOND
                load_ratios.append((lazy["full_load"] / seconds, where))
                ideal = f"{load_ratios[-1][0]:.2f}x of {seconds:.1f} s"
            rows.append(
                [
                    size,
                    link,
                    f"{part} ({_rows(percent)} of {ROWS} rows)",
                    *(cells[v][part]["first_tensor"] for v in VARIANTS),
                    *(cells[v][part]["full_load"] for v in VARIANTS),
                    *(cells[v][part]["fetched"] / 2**20 for v in VARIANTS),
                    partition / 2**20,
                    f"{byte_ratios[-1][0]:.3f} / {byte_ratios[-1][1]:.3f}",
                    ideal,
                ]
            )
    short = ("whole", "partition", "lazy2dfs")
    columns = [
        "model",
        "link",
        "partition",
        *(f"first tensor s: {s}" for s in short),
        *(f"full load s: {s}" for s in short),
        *(f"MiB fetched: {s}" for s in short),
        "partition MiB (eStargz)",
        "lazy2dfs fetched ÷ partition (all / allotments)",
        "lazy2dfs full load ÷ (partition / link rate)",
    ]
    trials = ", ".join(f"{size} MiB: {n}" for size, n in PLAN)
    notes = [
        f"Medians of {trials} trials per link. *whole*: overlayfs, whole image (plain tar.gz,"
        " one pull, the container reads the partition's files); *partition*: overlayfs on the"
        " partitioned image (2DFS without lazy loading: base and selected tar.gz allotments);"
        " *lazy2dfs*: `lazy2dfs pull REF--0.0.x2.0` of the eStargz 2DFS image. MiB fetched is"
        " everything the registry served (manifests, config, field, base layer and allotments);"
        " *allotments* counts only the partition's allotment blobs.",
        report.goal(
            f"Goal: lazy2dfs full partition load ≤ {GOAL_LOAD}x partition bytes / 1 Gbit/s",
            load_ratios,
            GOAL_LOAD,
        ),
        report.goal(
            f"Goal: lazy2dfs bytes fetched ≤ {GOAL_BYTES}x the partition's compressed bytes,"
            " counting everything",
            [(a, w) for a, _, w in byte_ratios],
            GOAL_BYTES,
        )
        + " "
        + report.goal(
            "Counting only the allotments",
            [(a, w) for _, a, w in byte_ratios],
            GOAL_BYTES,
        ),
    ]
    title = "2DFS partitions: overlayfs whole image, overlayfs partition, lazy2dfs partition"
    report.write_tables("partition_matrix", title, columns, rows, raw, notes)
    sizes = list(dict.fromkeys(key.split(", ", 1)[0] for key in medians))
    report.save_figure(
        "partition_matrix",
        _figure(medians, sizes, "first_tensor", "seconds to first tensor", raw),
        "_first_tensor",
    )
    return report.save_figure(
        "partition_matrix", _figure(medians, sizes, "full_load", "seconds to full load", raw)
    )


def _figure(
    medians: Medians, sizes: Sequence[str], metric: str, ylabel: str, raw: dict[str, Any]
) -> Figure:
    """A panel per link (row) and size (column): ``metric`` against partition %, a line per
    variant; full load on the emulated link also shows partition bytes / link rate."""
    fig, axes = plt.subplots(2, len(sizes), figsize=(4 * len(sizes), 7), squeeze=False)
    for row, link in enumerate((LOOPBACK, EMULATED)):
        for col, size in enumerate(sizes):
            ax = axes[row][col]
            cells = medians[f"{size}, {link}"]
            for variant in VARIANTS:
                values = [cells[variant][f"{p} %"][metric] for p in PERCENTS]
                ax.plot(PERCENTS, values, marker="o", label=variant)
            if link == EMULATED and metric == "full_load":
                ideal = [
                    raw["partition_bytes"][size][f"{p} %"]["eStargz"] / LINK_BYTES_PER_SECOND
                    for p in PERCENTS
                ]
                ax.plot(PERCENTS, ideal, "k--", label="partition bytes / link rate")
            ax.set_title(f"{size}, {link}", fontsize=9)
            ax.set_xticks(PERCENTS)
            ax.set_xlabel("partition (% of rows)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
        axes[row][0].legend(fontsize=7)
    return fig
