"""The tables and figures of ``benchmarks.study``, from its results file alone, so that saved
runs can be drawn again: ``python -m benchmarks.study_report RESULTS_JSON [OUT_DIR]``."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from benchmarks import report
from benchmarks.model_ready_report import COLD, STATES, WARM, paired_ratio, spread

NAME = "study"
BASE = "overlayfs"
COLORS = {
    "overlayfs": "tab:gray",
    "stargz": "tab:red",
    "soci": "tab:orange",
    "zstd": "tab:green",
    "gzip": "tab:blue",
}
MARKERS = {"overlayfs": "s", "stargz": "^", "soci": "v", "zstd": "o", "gzip": "D"}
MINILM = "minilm"

Key = tuple[str, str, int, str, str]  # model, link, partition %, snapshotter, state


def _mib(model: str, minilm_mib: float) -> float:
    return minilm_mib if model == MINILM else float(model)


class Results:
    """The runs by cell; runs whose peer was not lazy, or whose load failed, are in no cell."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.labels: dict[str, str] = raw["plan"]["snapshotters"]
        self.model_labels: dict[str, str] = raw["plan"]["models"]
        runs = raw["runs"]
        self.cells: dict[Key, list[dict[str, Any]]] = {}
        self.not_lazy: list[str] = []
        self.failures: list[str] = []
        self.checked: dict[str, list[int]] = {}  # snapshotter -> [lazy runs, runs]
        for run in runs:
            where = (
                f"{self.model_labels.get(run['model'], run['model'])}, {run['link']},"
                f" {run['partition']} %, {self.labels[run['snapshotter']]},"
                f" trial {run['trial'] + 1}"
            )
            counts = self.checked.setdefault(run["snapshotter"], [0, 0])
            counts[1] += 1
            present = run.get("layers_in_content_store") or []
            if present and run["snapshotter"] != BASE:
                self.not_lazy.append(f"{where}: {len(present)} layer blob(s) in the content store")
                continue
            counts[0] += 1
            for state in STATES:
                phase = run.get(state)
                if phase and "failed" in phase:
                    self.failures.append(f"{where}, {state}: {phase['failed']}")
                elif phase:
                    key = (run["model"], run["link"], run["partition"], run["snapshotter"], state)
                    measured = {**phase, **run["image"], "trial": run["trial"]}
                    measured["disk_mib"] = run.get("disk_mib")
                    self.cells.setdefault(key, []).append(measured)
        order = list(self.model_labels)
        present_models = {k[0] for k in self.cells}
        self.models = [m for m in order if m in present_models]
        self.links = list(dict.fromkeys(r["link"] for r in runs))
        self.partitions = sorted({k[2] for k in self.cells})
        self.snapshotters = [s for s in self.labels if any(k[3] == s for k in self.cells)]
        minilm = [
            float(i["model_mib"])
            for tag in raw.get("images", {}).get(MINILM, {}).values()
            for i in tag.values()
        ]
        self.minilm_mib = minilm[0] if minilm else 86.7

    def values(self, key: Key, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.cells.get(key, []) if r.get(metric) is not None]

    def median(self, key: Key, metric: str) -> float | None:
        values = self.values(key, metric)
        return statistics.median(values) if values else None

    def spread(self, key: Key, metric: str, digits: int = 2) -> str:
        return spread(self.values(key, metric), digits)

    def ratio(self, key: Key, metric: str, base: str = BASE) -> float | None:
        """Over ``base`` in the same model, link, partition and state (``paired_ratio``)."""
        model, link, percent, _, state = key
        theirs = self.cells.get((model, link, percent, base, state), [])
        return paired_ratio(self.cells.get(key, []), theirs, metric)

    def dates(self) -> str:
        """When each model's runs were measured: a study is refreshed a model at a time."""
        days: dict[str, set[str]] = {}
        for run in self.raw["runs"]:
            days.setdefault(run["model"], set()).add(run.get("measured", "")[:10])
        parts = []
        for m in self.models:
            dated = sorted(days[m] - {""})
            when = []
            if dated:
                first, last = dated[0], dated[-1]
                when.append(first if first == last else f"{first} to {last}")
            if "" in days[m]:
                when.append("undated runs")
            parts.append(f"{self.model_labels[m]}: {' and '.join(when)}")
        return "; ".join(parts)

    def trials(self) -> str:
        counts: dict[str, set[int]] = {}
        for key, runs in self.cells.items():
            counts.setdefault(key[0], set()).add(len(runs))
        return ", ".join(
            f"{self.model_labels[m]}: {'/'.join(str(n) for n in sorted(counts[m]))}"
            for m in self.models
        )


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ready_table(res: Results) -> tuple[list[str], list[list[Any]]]:
    """Model ready per cell and snapshotter, ratios to overlayfs, first tensor."""
    lazy = [s for s in res.snapshotters if s != BASE]
    columns = ["model", "link", "partition", "state"]
    columns += [f"{res.labels[s]}: ready s" for s in res.snapshotters]
    if BASE in res.snapshotters:
        columns += [f"{res.labels[s]} ÷ overlayfs" for s in lazy]
    columns += [f"first tensor s: {res.labels[s]}" for s in res.snapshotters]
    rows: list[list[Any]] = []
    for model in res.models:
        for link in res.links:
            for percent in res.partitions:
                for state in STATES:
                    keys = {s: (model, link, percent, s, state) for s in res.snapshotters}
                    if not any(res.cells.get(k) for k in keys.values()):
                        continue
                    row: list[Any] = [res.model_labels[model], link, f"{percent} %", state]
                    row += [res.spread(keys[s], "ready_s") for s in res.snapshotters]
                    if BASE in res.snapshotters:
                        row += [_x(res.ratio(keys[s], "ready_s")) for s in lazy]
                    row += [res.spread(keys[s], "first_tensor_s") for s in res.snapshotters]
                    rows.append(row)
    return columns, rows


def cost_table(res: Results) -> str:
    columns = [
        "model",
        "link",
        "partition",
        "snapshotter",
        "cold: pull s / container up s",
        "MiB needed",
        "MiB fetched",
        "fetched ÷ needed",
        "CPU s: cold load",
        "CPU s: to what the node holds",
        "CPU s: warm load",
        "peak RSS MiB",
        "disk MiB after",
        "page cache MiB: cold",
    ]
    rows = []
    for model in res.models:
        for link in res.links:
            for percent in res.partitions:
                for s in res.snapshotters:
                    cold = (model, link, percent, s, COLD)
                    warm = (model, link, percent, s, WARM)
                    if not res.cells.get(cold):
                        continue
                    rows.append(
                        [
                            res.model_labels[model],
                            link,
                            f"{percent} %",
                            res.labels[s],
                            _pair(res, cold, "pull_s", "started_s"),
                            res.spread(cold, "needed_mib", 1),
                            res.spread(cold, "fetched_total_mib", 1),
                            res.spread(cold, "fetched_ratio", 3),
                            res.spread(cold, "daemon_cpu_s"),
                            res.spread(cold, "daemon_cpu_s_whole"),
                            res.spread(warm, "daemon_cpu_s"),
                            res.spread(cold, "daemon_peak_rss_mib", 0),
                            res.spread(cold, "disk_mib", 0),
                            res.spread(cold, "page_cache_mib", 0),
                        ]
                    )
    return _markdown(columns, rows)


def _pair(res: Results, key: Key, first: str, second: str) -> str:
    a, b = res.median(key, first), res.median(key, second)
    return "—" if a is None or b is None else f"{a:.2f} / {b:.2f}"


def lazy_table(res: Results) -> str:
    rows = [
        [res.labels[s], f"{lazy} of {runs}"] for s, (lazy, runs) in res.checked.items() if s != BASE
    ]
    return _markdown(["snapshotter", "runs with no layer blob in the content store"], rows)


def notes(res: Results) -> list[str]:
    out = [
        "Model ready: seconds from the phase's start (cold: the pull; warm: `ctr run`) to the"
        " last tensor of the partition's safetensors shards loaded by `safetensors.safe_open`"
        " (memory-mapped, `get_tensor` for every key) in a new container; first tensor: to the"
        " first. Medians, (min-max) over the trials (per model: "
        + res.trials()
        + "); ratios against overlayfs are the median of trial-by-trial ratios. Runs measured"
        " (UTC day; undated runs are from before runs kept their date, 2026-12-06 and"
        " earlier): " + res.dates() + ".",
        "## Costs\n\nMiB needed: the compressed layers of what the snapshotter pulls in its"
        " own format (base and the partition's shards; the formats compress differently)."
        " MiB fetched: every GET body the registry served, manifests, indexes, TOCs and SOCI"
        " zTOCs included, by the time the node held what it would. CPU: utime + stime of the"
        " snapshotter's processes (lazy2dfs: daemon and FUSE keeper; stargz, SOCI: their"
        " daemon; overlayfs: containerd and the `ctr` pull, which fetch and unpack). Peak RSS:"
        " the daemon's VmHWM (containerd's for overlayfs). Disk: `du -x` of the node's"
        " directories after the warm load (FUSE mounts left out). Page cache: pages of the"
        " node's files after the cold load. Pull s: the pull command (`ctr images pull`,"
        " `lazy2dfs pull`, or CRI's PullImage) alone; container up s: from the pull's start to"
        " the loader's first line in the container.\n\n" + cost_table(res),
        "## Every peer checked lazy\n\nAfter each pull, containerd's content store was listed"
        " (`ctr content ls`): a run with any of the image's layer blobs there fell back to a"
        " download and is in no table or figure.\n\n" + lazy_table(res),
    ]
    if res.not_lazy:
        out.append("Runs left out as not lazy:\n\n" + "\n".join(f"- {n}" for n in res.not_lazy))
    if res.failures:
        out.append(
            "## Failed loads\n\nLeft out of every table and figure:\n\n"
            + "\n".join(f"- {f}" for f in res.failures)
        )
    return out


def write(raw: dict[str, Any], out: Path) -> Path:
    """Writes ``study.{json,md}`` and the figures to ``out``; returns the main figure."""
    res = Results(raw)
    columns, rows = ready_table(res)
    title = "The study: model ready on every lazy snapshotter, by size, partition and link"
    report.write_tables(NAME, title, columns, rows, raw, notes(res), directory=out)
    if not res.cells:
        return out / f"{NAME}.md"
    report.save_figure(NAME, partitions_figure(res), "_partitions", directory=out)
    report.save_figure(NAME, bytes_figure(res), "_bytes", directory=out)
    report.save_figure(NAME, cpu_figure(res), "_cpu", directory=out)
    return report.save_figure(NAME, size_figure(res), directory=out)


def _log_axes(ax: Any) -> None:
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.grid(True, which="both", alpha=0.3)


def size_figure(res: Results) -> Figure:
    """Model ready against model size, whole model (100 %): a panel per state and link."""
    fig, axes = plt.subplots(2, len(res.links), figsize=(5.5 * len(res.links), 7.5), squeeze=False)
    sizes = {m: _mib(m, res.minilm_mib) for m in res.models}
    for row, state in enumerate(STATES):
        for col, link in enumerate(res.links):
            ax = axes[row][col]
            for s in res.snapshotters:
                points = [
                    (sizes[m], (m, link, 100, s, state))
                    for m in sorted(res.models, key=lambda m: sizes[m])
                    if res.cells.get((m, link, 100, s, state))
                ]
                if not points:
                    continue
                meds = [res.median(k, "ready_s") or 0.0 for _, k in points]
                lows = [
                    m - min(res.values(k, "ready_s"))
                    for m, (_, k) in zip(meds, points, strict=True)
                ]
                highs = [
                    max(res.values(k, "ready_s")) - m
                    for m, (_, k) in zip(meds, points, strict=True)
                ]
                ax.errorbar(
                    [x for x, _ in points],
                    meds,
                    yerr=[lows, highs],
                    marker=MARKERS.get(s),
                    capsize=3,
                    color=COLORS.get(s),
                    label=res.labels[s],
                )
            ax.set_xscale("log", base=2)
            ticks = sorted(sizes.values())
            ax.set_xticks(
                ticks,
                [res.model_labels[m].split(" (")[0] for m in sorted(sizes, key=lambda m: sizes[m])],
                fontsize=7,
            )
            _log_axes(ax)
            ax.set_title(f"{state} model ready, whole model, {link}", fontsize=9)
            ax.set_xlabel("model size")
            ax.set_ylabel("seconds to every tensor loaded (log)")
            ax.legend(fontsize=7)
    fig.suptitle(
        "Model ready by model size (whole model): from the pull (cold) or the container's"
        " start (warm)\nto every tensor loaded in a new container; lower is better",
        fontsize=10,
    )
    return fig


def partitions_figure(res: Results) -> Figure:
    """Cold model ready against the partition's share of rows: a panel per model and link."""
    models = [m for m in res.models if m != MINILM]
    if not models:
        models = res.models
    fig, axes = plt.subplots(
        len(res.links),
        len(models),
        figsize=(4.2 * len(models), 3.6 * len(res.links)),
        squeeze=False,
    )
    for row, link in enumerate(res.links):
        for col, model in enumerate(models):
            ax = axes[row][col]
            for s in res.snapshotters:
                points = [
                    (p, res.median((model, link, p, s, COLD), "ready_s")) for p in res.partitions
                ]
                present = [(p, v) for p, v in points if v is not None]
                if present:
                    ax.plot(
                        *zip(*present, strict=True),
                        marker=MARKERS.get(s),
                        color=COLORS.get(s),
                        label=res.labels[s],
                    )
            ax.set_xticks(res.partitions, [f"{p} %" for p in res.partitions])
            ax.set_xlabel("2DFS partition (share of the model's rows)")
            ax.set_ylabel("cold model ready s")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{res.model_labels[model]}, {link}", fontsize=9)
            ax.legend(fontsize=6)
    fig.suptitle(
        "Cold model ready by 2DFS partition: lazy2dfs pulls REF--0.0.r.0, each peer an image"
        " of the partition;\nlower is better",
        fontsize=10,
    )
    return fig


def bytes_figure(res: Results) -> Figure:
    """Bytes fetched over the bytes of the layers pulled, per model and partition."""
    groups = [(m, p) for m in res.models for p in res.partitions if _any(res, m, p)]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(groups)), 4.2))
    width = 0.8 / max(1, len(res.snapshotters))
    for i, s in enumerate(res.snapshotters):
        xs, ys = [], []
        for g, (model, percent) in enumerate(groups):
            values = [
                v
                for link in res.links
                for v in res.values((model, link, percent, s, COLD), "fetched_ratio")
            ]
            if values:
                xs.append(g + i * width)
                ys.append(statistics.median(values))
        ax.bar(xs, ys, width, color=COLORS.get(s), label=res.labels[s])
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="every layer byte once")
    ax.set_xticks(
        [g + width * (len(res.snapshotters) - 1) / 2 for g in range(len(groups))],
        [f"{res.model_labels[m].split(' (')[0]}\n{p} %" for m, p in groups],
        fontsize=7,
    )
    ax.set_ylabel("bytes fetched ÷ bytes of the layers pulled")
    ax.set_title(
        "What the registry served for the whole image (all links), over the image's layers",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    return fig


def _any(res: Results, model: str, percent: int) -> bool:
    return any(k[0] == model and k[2] == percent for k in res.cells)


def cpu_figure(res: Results) -> Figure:
    """Snapshotter CPU seconds per GiB loaded, cold and to what the node holds, whole model."""
    fig, axes = plt.subplots(1, len(res.links), figsize=(6.5 * len(res.links), 5), squeeze=False)
    series = [(s, metric) for s in res.snapshotters for metric in ("cold", "whole")]
    width = 0.8 / max(1, len(series))
    for col, link in enumerate(res.links):
        ax = axes[0][col]
        for i, (s, metric) in enumerate(series):
            xs, ys = [], []
            for g, model in enumerate(res.models):
                key = (model, link, 100, s, COLD)
                runs = res.cells.get(key, [])
                if not runs:
                    continue
                gib = _mib(model, res.minilm_mib) / 1024
                name = "daemon_cpu_s" if metric == "cold" else "daemon_cpu_s_whole"
                xs.append(g + i * width)
                ys.append(statistics.median(float(r[name]) for r in runs) / gib)
            ax.bar(
                xs,
                ys,
                width,
                color=COLORS.get(s),
                hatch="//" if metric == "whole" else None,
                edgecolor="black",
                linewidth=0.4,
                label=f"{res.labels[s]}, {'load' if metric == 'cold' else 'to whole image'}",
            )
        ax.set_xticks(
            [g + width * (len(series) - 1) / 2 for g in range(len(res.models))],
            [res.model_labels[m].split(" (")[0] for m in res.models],
        )
        ax.set_ylabel("snapshotter CPU s per GiB of model")
        ax.set_title(
            f"Snapshotter CPU, cold: the load (plain) and to all the node will hold"
            f" (hatched), {link}",
            fontsize=8,
        )
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    return fig


def main() -> None:
    """Draws saved runs again: ``python -m benchmarks.study_report RESULTS_JSON [OUT]``."""
    source = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent
    print(write(json.loads(source.read_text()), out))


if __name__ == "__main__":
    main()
