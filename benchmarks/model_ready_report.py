"""The tables, goals and figures of ``benchmarks.model_ready``, from its raw results alone, so
that a saved ``model_ready.json`` can be drawn again:
``python -m benchmarks.model_ready_report docs/benchmarks/model_ready.json [OUT_DIR]``."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from benchmarks import report

NAME = "model_ready"
COLD, WARM = "cold", "warm"
STATES = (COLD, WARM)
BASE = "overlayfs"
GOAL_SIZE = 1024
COLORS = {
    "overlayfs": "tab:gray",
    "gzip": "tab:blue",
    "zstd": "tab:green",
    "zstd-cri": "tab:olive",
    "stargz": "tab:red",
}

Key = tuple[int, str, str, str, int]  # size MiB, link, format, state, containers


class Results:
    """The runs of one ``model_ready`` run, by cell, with medians and spreads."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.labels: dict[str, str] = raw["plan"]["formats"]
        self.formats = [f for f in self.labels if any(r["format"] == f for r in raw["runs"])]
        self.cells: dict[Key, list[dict[str, Any]]] = {}
        self.failures: list[str] = []  # loads that failed, with why: in no cell
        for run in raw["runs"]:
            for state in STATES:
                phase = run[state]
                key = (run["size_mib"], run["link"], run["format"], state, run["containers"])
                if phase and "failed" in phase:
                    where = f"{_size(key[0])}, {key[1]}, {self.labels[key[2]]}, N = {key[4]}"
                    self.failures.append(
                        f"{where}, trial {run['trial'] + 1}, {state}: {phase['failed']}"
                    )
                elif phase:
                    measured = {**phase, **run["image"], "trial": run["trial"]}
                    self.cells.setdefault(key, []).append(measured)
        self.sizes = sorted({k[0] for k in self.cells})
        self.links = list(dict.fromkeys(r["link"] for r in raw["runs"]))
        self.states = [s for s in STATES if any(k[3] == s for k in self.cells)]
        self.counts = sorted({k[4] for k in self.cells})
        self.n = self.counts[0] if self.counts else 1  # containers at once in the main tables

    def values(self, key: Key, metric: str) -> list[float]:
        """The metric of the cell's runs that have it (runs of older code may not)."""
        runs = self.cells.get(key, [])
        return [float(run[metric]) for run in runs if run.get(metric) is not None]

    def median(self, key: Key, metric: str) -> float | None:
        values = self.values(key, metric)
        return statistics.median(values) if values else None

    def spread(self, key: Key, metric: str, digits: int = 2) -> str:
        return spread(self.values(key, metric), digits)

    def _undisturbed(self, key: Key) -> tuple[list[float], bool]:
        """The cell's page cache figures from runs during which no other process dropped the
        page cache (a drop makes the figure too low), and whether any run was left out."""
        runs = self.cells.get(key, [])
        clean = [float(run["page_cache_mib"]) for run in runs if not run.get("foreign_drops")]
        return clean, len(clean) < len(runs)

    def page_cache(self, key: Key) -> str:
        """Median (min-max) MiB of the undisturbed runs; * when runs were left out, a dash
        when none is left."""
        clean, left_out = self._undisturbed(key)
        mark = "*" if left_out else ""
        if not clean:
            return "—" + mark
        if len(clean) == 1:
            return f"{clean[0]:.0f}{mark}"
        return f"{statistics.median(clean):.0f} ({min(clean):.0f}-{max(clean):.0f}){mark}"

    def page_cache_median(self, key: Key) -> float | None:
        clean, _ = self._undisturbed(key)
        return statistics.median(clean) if clean else None

    @property
    def disturbed(self) -> tuple[int, int]:
        """Phases during which another process dropped the page cache, and all phases."""
        runs = [run for cell in self.cells.values() for run in cell]
        return sum(1 for run in runs if run.get("foreign_drops")), len(runs)

    def ratio(self, key: Key, metric: str, base: str = BASE) -> float | None:
        """This cell over ``base``'s (same size, link, state and count): see ``paired_ratio``."""
        size, link, _, state, count = key
        theirs = self.cells.get((size, link, base, state, count), [])
        return paired_ratio(self.cells.get(key, []), theirs, metric)


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``median (min-max)``, or the one value, or a dash."""
    if not values:
        return "—"
    middle = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def paired_ratio(
    ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], metric: str
) -> float | None:
    """``metric`` of runs ``ours`` over ``theirs``: the median of the ratios trial by trial, as
    each trial ran every format within minutes of each other while the machine's load drifts;
    medians over medians for trials that do not pair."""
    by_trial = {run["trial"]: float(run[metric]) for run in theirs}
    paired = [
        float(run[metric]) / by_trial[run["trial"]] for run in ours if by_trial.get(run["trial"])
    ]
    if paired:
        return statistics.median(paired)
    if not ours or not theirs:
        return None
    base = statistics.median(float(run[metric]) for run in theirs)
    return statistics.median(float(run[metric]) for run in ours) / base if base else None


def _x(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}x"


def _size(size_mib: int) -> str:
    return f"{size_mib // 1024} GiB" if size_mib >= 1024 else f"{size_mib} MiB"


def _ready_table(res: Results) -> tuple[list[str], list[list[Any]]]:
    lazy = [f for f in res.formats if f != BASE]
    columns = ["model", "link", "state"]
    columns += [f"{res.labels[f]}: ready s" for f in res.formats]
    columns += [f"{res.labels[f]} ÷ overlayfs" for f in lazy if BASE in res.formats]
    columns += [f"first tensor s: {res.labels[f]}" for f in res.formats]
    rows: list[list[Any]] = []
    for size in res.sizes:
        for link in res.links:
            for state in res.states:
                keys = {f: (size, link, f, state, res.n) for f in res.formats}
                if not any(res.cells.get(k) for k in keys.values()):
                    continue
                row: list[Any] = [_size(size), link, state]
                row += [res.spread(keys[f], "ready_s") for f in res.formats]
                if BASE in res.formats:
                    row += [_x(res.ratio(keys[f], "ready_s")) for f in lazy]
                row += [res.spread(keys[f], "first_tensor_s") for f in res.formats]
                rows.append(row)
    return columns, rows


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cost_table(res: Results) -> str:
    columns = [
        "model",
        "link",
        "format",
        "cold: pull s / container up s",
        "daemon CPU s/GiB: cold",
        "registry / loader CPU s/GiB: cold",
        "cold, to the whole image",
        "warm",
        "fetched ÷ needed",
        "daemon peak RSS MiB",
        "whole image on the node s",
        "warm lower dirs on FUSE",
        "page cache MiB: cold",
        "whole image",
        "warm",
    ]
    rows = []
    for size in res.sizes:
        for link in res.links:
            for f in res.formats:
                cold, warm = (size, link, f, COLD, res.n), (size, link, f, WARM, res.n)
                if not (res.cells.get(cold) or res.cells.get(warm)):
                    continue
                any_key = cold if res.cells.get(cold) else warm
                lowers = "—"
                if res.cells.get(warm) and f != BASE:
                    seen = res.cells[warm][0]
                    lowers = f"{seen['lowers_on_fuse']} of {seen['lowers']}"
                rows.append(
                    [
                        _size(size),
                        link,
                        res.labels[f],
                        _pair(res, cold, "pull_s", "started_s"),
                        res.spread(cold, "daemon_cpu_s_per_gib"),
                        _pair(res, cold, "registry_cpu_s_per_gib", "loader_cpu_s_per_gib"),
                        res.spread(any_key, "daemon_cpu_s_per_gib_whole"),
                        res.spread(warm, "daemon_cpu_s_per_gib"),
                        res.spread(any_key, "fetched_ratio", 3),
                        res.spread(cold, "daemon_peak_rss_mib", 0),
                        res.spread(any_key, "complete_s") + _unverified(res.cells[any_key]),
                        lowers,
                        res.page_cache(cold),
                        res.spread(any_key, "page_cache_whole_mib", 0),
                        res.page_cache(warm),
                    ]
                )
    return _markdown(columns, rows)


def _pair(res: Results, key: Key, first: str, second: str) -> str:
    a, b = res.median(key, first), res.median(key, second)
    return "—" if a is None or b is None else f"{a:.2f} / {b:.2f}"


def _unverified(runs: Sequence[dict[str, Any]]) -> str:
    """What a lazy2dfs run left unverified (those layers stay on FUSE), if anything."""
    short = [r["layers_verified"] for r in runs if r.get("layers_verified")]
    short = [c for c in short if c["verified"] < c["layers"]]
    if not short:
        return ""
    worst = min(short, key=lambda c: c["verified"])
    return f" (only {worst['verified']} of {worst['layers']} layers verified)"


def _sharing_table(res: Results) -> str:
    if len(res.counts) < 2:
        return ""
    counts = res.counts
    columns = ["model", "link", "format"]
    columns += [f"page cache MiB, {s}, N = {n}" for s in res.states for n in counts]
    columns += [f"ready s, {s}, N = {n}" for s in res.states for n in counts]
    rows = []
    for size in res.sizes:
        for link in res.links:
            for f in res.formats:
                keys = [(size, link, f, s, n) for s in res.states for n in counts]
                if not any(res.cells.get(k) for k in keys if k[4] != res.n):
                    continue
                row: list[Any] = [_size(size), link, res.labels[f]]
                row += [res.page_cache(k) for k in keys]
                row += [res.spread(k, "ready_s") for k in keys]
                rows.append(row)
    return _markdown(columns, rows)


def _goals(res: Results) -> list[str]:
    def cells(state: str, fmt: str, size: int | None = None) -> list[Key]:
        return [
            k
            for k in res.cells
            if k[2] == fmt and k[3] == state and k[4] == 1 and (size is None or k[0] == size)
        ]

    def ratios(keys: list[Key], metric: str, base: str = BASE) -> list[tuple[float, str]]:
        found = []
        for key in keys:
            value = res.ratio(key, metric, base)
            if value is not None:
                found.append((value, f"{_size(key[0])}, {key[1]}, {res.labels[key[2]]}"))
        return found

    def absolute(keys: list[Key], metric: str) -> list[tuple[float, str]]:
        found = []
        for key in keys:
            value = res.median(key, metric)
            if value is not None:
                found.append((value, f"{_size(key[0])}, {key[1]}, {res.labels[key[2]]}"))
        return found

    lazy = [f for f in ("gzip", "zstd", "zstd-cri") if f in res.formats]
    warm = [k for f in lazy for k in cells(WARM, f)]
    rss = [k for f in lazy for k in cells(COLD, f, 4096)]
    fetched = [k for f in lazy for k in cells(COLD, f) + cells(WARM, f)]
    return [
        report.goal(
            "Goal: cold model ready, 1 GiB, lazy2dfs on gzip eStargz ≤ 0.20x overlayfs",
            ratios(cells(COLD, "gzip", GOAL_SIZE), "ready_s"),
            0.20,
        ),
        report.goal(
            "Goal: … and ≤ 0.15x upstream stargz",
            ratios(cells(COLD, "gzip", GOAL_SIZE), "ready_s", "stargz"),
            0.15,
        ),
        report.goal(
            "Goal: cold first tensor, 1 GiB, gzip eStargz ≤ 1.0 s",
            absolute(cells(COLD, "gzip", GOAL_SIZE), "first_tensor_s"),
            1.0,
            unit=" s",
        ),
        report.goal(
            "Goal: cold model ready, 1 GiB, lazy2dfs on zstd:chunked ≤ 0.14x overlayfs",
            ratios(cells(COLD, "zstd", GOAL_SIZE), "ready_s"),
            0.14,
        ),
        report.goal(
            "Goal: … and pulled as kubelet pulls (CRI) ≤ 0.14x overlayfs",
            ratios(cells(COLD, "zstd-cri", GOAL_SIZE), "ready_s"),
            0.14,
        ),
        report.goal(
            "Goal: cold first tensor, 1 GiB, zstd:chunked pulled through CRI ≤ 1.0 s",
            absolute(cells(COLD, "zstd-cri", GOAL_SIZE), "first_tensor_s"),
            1.0,
            unit=" s",
        ),
        report.goal("Goal: warm model ready ≤ 1.15x overlayfs", ratios(warm, "ready_s"), 1.15),
        report.goal(
            "Goal: lazy2dfs daemon peak RSS ≤ 250 MiB loading 4 GiB",
            absolute(rss, "daemon_peak_rss_mib"),
            250,
            unit=" MiB",
        ),
        report.goal(
            "Goal: bytes fetched ≤ 1.02x bytes needed (lazy2dfs)",
            sorted(set(absolute(fetched, "fetched_ratio"))),
            1.02,
        ),
    ]


def _notes(res: Results) -> list[str]:
    plan = res.raw["plan"]
    trials = ", ".join(
        f"{_size(s)}: {max(len(r) for k, r in res.cells.items() if k[0] == s and k[4] == res.n)}"
        for s in res.sizes
    )
    notes = [
        "Model ready: seconds from the phase's start (cold: the pull; warm: `ctr run`) to the"
        " last of the 128 tensors of 4 F16 safetensors shards loaded in a new container by"
        " `safetensors.safe_open` (memory-mapped, `get_tensor` for every key); first tensor: to"
        " the first. Cold: fresh containerd and daemons, nothing cached, page cache dropped;"
        " warm: the same node once it holds the whole image (lazy2dfs: every layer verified),"
        " page cache dropped, new containers; each trial's warm figure is the median of 3"
        " such loads (one load varies with the disk by a fifth). Medians of the trials,"
        " (min-max) when more than"
        f" one (trials with {res.n} container(s) at once, per size: {trials}); ratios are"
        " against overlayfs in the same run: the median of the trials' ratios (trial k of every"
        " format runs within minutes, so drifting load on the machine falls on all alike).",
        "Pull s: the pull command alone; container up s: from the pull's start to the"
        " loader's first line in the container (medians). Daemon CPU: utime + stime of the"
        " lazy2dfs daemon and its FUSE keeper, the stargz daemon, or for overlayfs containerd"
        " and the `ctr images pull` client (which fetch and unpack), per GiB of model, from"
        " the phase's start to the last tensor (and, cold, to the whole image on the node:"
        " lazy2dfs's verification and local tree included); registry / loader: the rest of"
        " what the machine spent on the cold load, the registry serving it and one container"
        " loading it (its interpreter's start included). Peak RSS: the daemon's VmHWM"
        " (containerd's for overlayfs). Fetched ÷ needed: bytes the registry's access log"
        " served by the time the node held the whole image, over the image's manifest, config"
        " and layer blobs. Page cache: pages of the files under the stack's directories"
        " (content store, snapshots, caches, FUSE mounts) after the load, and once the node"
        " holds the whole image (lazy2dfs's cache has then made its files durable and dropped"
        " their pages), each inode once (`cachestat`). Warm lower dirs on FUSE: how many of"
        " the container's overlay lower directories were the snapshotter's FUSE directories."
        " Page cache"
        " figures leave out runs during which another process on the machine dropped the page"
        " cache (/proc/vmstat drop_pagecache), marked *, a dash when none was left (a warm"
        " load so spoiled is run again, up to 3 more times):"
        f" {res.disturbed[0]} of {res.disturbed[1]} phases in this run.",
        "## Costs\n\n" + _cost_table(res),
    ]
    sharing = _sharing_table(res)
    if sharing:
        notes.append(
            "## N containers loading one model at once\n\n"
            "The page cache the node's files of the image take, and the last container's"
            " model ready, for N containers started together; one copy shared means the page"
            " cache does not grow with N.\n\n" + sharing
        )
    if res.failures:
        notes.append(
            "## Failed loads\n\nLeft out of every table and figure above:\n\n"
            + "\n".join(f"- {failure}" for failure in res.failures)
        )
    notes += _goals(res)
    if plan.get("profile"):
        notes.append(
            f"The lazy2dfs daemon was profiled with py-spy during this run: timings"
            f" include its sampling ({plan['profile']})."
        )
    return notes


def write(raw: dict[str, Any], out: Path) -> Path:
    """Writes ``model_ready.{json,md}`` and its figures to ``out``; returns the main figure."""
    res = Results(raw)
    columns, rows = _ready_table(res)
    title = "Model ready: a new container loads every tensor of a safetensors model"
    report.write_tables(NAME, title, columns, rows, raw, _notes(res), directory=out)
    for suffix, figure in (
        ("_cold_warm", _cold_warm_figure(res)),
        ("_cpu", _bars_figure(res, "daemon_cpu_s_per_gib", "daemon CPU s per GiB of model")),
        ("_bytes", _bytes_figure(res)),
        ("_memory", _memory_figure(res)),
    ):
        report.save_figure(NAME, figure, suffix, directory=out)
    return report.save_figure(NAME, _ready_figure(res), directory=out)


def _label(res: Results, fmt: str) -> str:
    return res.labels[fmt] + (" (containerd)" if fmt == BASE else "")


def _ready_figure(res: Results) -> Figure:
    """Seconds against model size, a panel per link and measure, a line per format."""
    panels = [(s, "ready_s", f"{s} model ready") for s in res.states]
    if COLD in res.states:
        panels.append((COLD, "first_tensor_s", "cold first tensor"))
    fig, axes = plt.subplots(
        len(panels), len(res.links), figsize=(5 * len(res.links), 3.2 * len(panels)), squeeze=False
    )
    for row, (state, metric, title) in enumerate(panels):
        for col, link in enumerate(res.links):
            ax = axes[row][col]
            for f in res.formats:
                keys = [(s, link, f, state, res.n) for s in res.sizes]
                present = [(s, k) for s, k in zip(res.sizes, keys, strict=True) if res.cells.get(k)]
                if not present:
                    continue
                meds = [res.median(k, metric) or 0 for _, k in present]
                lows = [
                    m - min(res.values(k, metric)) for m, (_, k) in zip(meds, present, strict=True)
                ]
                highs = [
                    max(res.values(k, metric)) - m for m, (_, k) in zip(meds, present, strict=True)
                ]
                ax.errorbar(
                    [s for s, _ in present],
                    meds,
                    yerr=[lows, highs],
                    marker="o",
                    capsize=3,
                    label=res.labels[f],
                    color=COLORS.get(f),
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(res.sizes, [_size(s) for s in res.sizes])
            ax.set_yscale("log")
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=6)
            ax.set_title(f"{title}, {link}", fontsize=9)
            ax.set_xlabel("model size")
            ax.set_ylabel("seconds (log)")
            ax.grid(True, which="both", alpha=0.3)
        axes[row][0].legend(fontsize=7)
    fig.suptitle("Model ready: pull (cold) or start (warm) to every tensor loaded", fontsize=10)
    return fig


def _bar_style(fmt: str, state: str) -> dict[str, Any]:
    """A format's colour; warm bars hatched."""
    hatch = "//" if state == WARM else None
    return {"color": COLORS.get(fmt), "hatch": hatch, "edgecolor": "black", "linewidth": 0.5}


def _cold_warm_figure(res: Results) -> Figure:
    """Cold and warm seconds side by side per format, with the ratio to overlayfs on top."""
    fig, axes = plt.subplots(
        len(res.sizes),
        len(res.links),
        figsize=(5 * len(res.links), 3.2 * len(res.sizes)),
        squeeze=False,
    )
    width = 0.8 / max(1, len(res.states))
    for row, size in enumerate(res.sizes):
        for col, link in enumerate(res.links):
            ax = axes[row][col]
            for i, state in enumerate(res.states):
                for j, f in enumerate(res.formats):
                    key = (size, link, f, state, res.n)
                    value = res.median(key, "ready_s")
                    if value is None:
                        continue
                    ax.bar(j + i * width, value, width, **_bar_style(f, state))
                    ratio = res.ratio(key, "ready_s")
                    if ratio is not None and f != BASE:
                        ax.annotate(
                            f"{ratio:.2f}x",
                            (j + i * width, value),
                            ha="center",
                            va="bottom",
                            fontsize=7,
                        )
            ax.set_xticks(
                [j + width * (len(res.states) - 1) / 2 for j in range(len(res.formats))],
                [res.labels[f].replace(", ", "\n") for f in res.formats],
                fontsize=7,
            )
            ax.set_ylabel("model ready s")
            ax.set_title(
                f"{_size(size)}, {link}: cold (plain) and warm (hatched), ratio to overlayfs",
                fontsize=9,
            )
    return fig


def _bars_figure(res: Results, metric: str, ylabel: str) -> Figure:
    """``metric`` per size (groups) and format (bars), cold plain and warm hatched."""
    fig, axes = plt.subplots(1, len(res.links), figsize=(6 * len(res.links), 4), squeeze=False)
    series = [(f, s) for f in res.formats for s in res.states]
    width = 0.8 / max(1, len(series))
    for col, link in enumerate(res.links):
        ax = axes[0][col]
        for i, (f, state) in enumerate(series):
            xs, ys = [], []
            for g, size in enumerate(res.sizes):
                value = res.median((size, link, f, state, res.n), metric)
                if value is not None:
                    xs.append(g + i * width)
                    ys.append(value)
            ax.bar(xs, ys, width, label=f"{_label(res, f)}, {state}", **_bar_style(f, state))
        ax.set_xticks(
            [g + width * (len(series) - 1) / 2 for g in range(len(res.sizes))],
            [_size(s) for s in res.sizes],
        )
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel}, {link}", fontsize=9)
        ax.legend(fontsize=6)
    return fig


def _bytes_figure(res: Results) -> Figure:
    groups = [(s, link) for s in res.sizes for link in res.links]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(res.formats))
    for i, f in enumerate(res.formats):
        xs, ys = [], []
        for g, (size, link) in enumerate(groups):
            key = next(
                (k for k in ((size, link, f, s, res.n) for s in res.states) if res.cells.get(k)),
                None,
            )
            if key is not None:
                xs.append(g + i * width)
                ys.append(res.median(key, "fetched_ratio") or 0)
        ax.bar(xs, ys, width, color=COLORS.get(f), label=res.labels[f])
    ax.axhline(1.02, color="black", linestyle="--", linewidth=1, label="goal: 1.02x")
    ax.set_xticks(
        [g + width * (len(res.formats) - 1) / 2 for g in range(len(groups))],
        [f"{_size(s)}\n{link}" for s, link in groups],
        fontsize=8,
    )
    ax.set_ylim(0.9, max(1.1, *(r["image"]["fetched_ratio"] for r in res.raw["runs"])) + 0.02)
    ax.set_ylabel("bytes fetched ÷ bytes needed")
    ax.set_title(
        "Bytes the registry served for the whole image, over the image's bytes", fontsize=9
    )
    ax.legend(fontsize=7)
    return fig


def _memory_figure(res: Results) -> Figure:
    fig, (rss, cache) = plt.subplots(1, 2, figsize=(11, 4))
    link = res.links[0]
    for f in res.formats:
        keys = [(s, link, f, COLD, res.n) for s in res.sizes]
        present = [
            (s, res.median(k, "daemon_peak_rss_mib")) for s, k in zip(res.sizes, keys, strict=True)
        ]
        points = [(s, v) for s, v in present if v is not None]
        if points:
            rss.plot(
                *zip(*points, strict=True), marker="o", color=COLORS.get(f), label=_label(res, f)
            )
    rss.axhline(250, color="black", linestyle="--", linewidth=1, label="goal: 250 MiB")
    rss.set_xscale("log", base=2)
    rss.set_xticks(res.sizes, [_size(s) for s in res.sizes])
    rss.set_xlabel("model size")
    rss.set_ylabel("daemon peak RSS MiB")
    rss.set_ylim(bottom=0)
    rss.set_title(f"Daemon peak RSS, cold load, {link}", fontsize=9)
    rss.legend(fontsize=7)
    _page_cache_panel(res, cache)
    return fig


def _page_cache_panel(res: Results, ax: Axes) -> None:
    """Page cache against N containers at the largest size where N > 1 ran."""
    shared = [k for k in res.cells if k[4] != res.n]
    if not shared:
        ax.set_title("page cache by containers: no run with N > 1", fontsize=9)
        return
    size, link = max((k[0], k[1]) for k in shared)
    for f in res.formats:
        for state in res.states:
            points = [(n, res.page_cache_median((size, link, f, state, n))) for n in res.counts]
            present = [(n, v) for n, v in points if v is not None]
            if present:
                ax.plot(
                    *zip(*present, strict=True),
                    marker="o",
                    color=COLORS.get(f),
                    linestyle="--" if state == WARM else "-",
                    markerfacecolor="white" if state == WARM else None,
                    label=f"{res.labels[f]}, {state}",
                )
    ax.axhline(size, color="black", linestyle=":", linewidth=1, label="model size")
    ax.set_xticks(res.counts)
    ax.set_xlabel("containers loading the model at once")
    ax.set_ylabel("page cache MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Page cache of the node's files, {_size(size)}, {link}", fontsize=9)
    ax.legend(fontsize=6)


def main() -> None:
    """Draws a saved result again: ``python -m benchmarks.model_ready_report JSON [OUT]``."""
    source = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent
    print(write(json.loads(source.read_text())["raw"], out))


if __name__ == "__main__":
    main()
