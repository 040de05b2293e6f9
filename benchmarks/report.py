"""Writes a benchmark's results as JSON, a Markdown table and a PNG bar chart."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; exact for the small sample counts used here."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine() -> dict[str, Any]:
    import os

    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def write(
    name: str,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    raw: dict[str, Any],
    plot_groups: dict[str, dict[str, float]],
    ylabel: str,
) -> Path:
    """``plot_groups`` maps a group label (x axis) to {series: value}."""
    write_tables(name, title, columns, rows, raw)
    series = sorted({s for group in plot_groups.values() for s in group})
    fig, ax = plt.subplots(figsize=(max(6, len(plot_groups) * 1.2), 4))
    width = 0.8 / max(1, len(series))
    for i, label in enumerate(series):
        xs = [g + i * width for g in range(len(plot_groups))]
        ax.bar(xs, [group.get(label, 0) for group in plot_groups.values()], width, label=label)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(plot_groups))])
    ax.set_xticklabels(list(plot_groups), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(name, fig)


def write_tables(
    name: str,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    raw: dict[str, Any],
    notes: Sequence[str] = (),
    directory: Path = RESULTS_DIR,
) -> None:
    """``<name>.json`` and ``<name>.md`` in ``directory``, for benchmarks that draw their own
    figures; ``notes`` are paragraphs under the table."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(
        json.dumps({"machine": machine(), "columns": columns, "rows": rows, "raw": raw}, indent=1)
    )
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    for note in notes:
        lines += ["", note]
    lines += ["", f"Measured {machine()['when']} on {machine()['cpus']} CPUs, `make bench`."]
    (directory / f"{name}.md").write_text("\n".join(lines) + "\n")


def save_figure(name: str, fig: Figure, suffix: str = "", directory: Path = RESULTS_DIR) -> Path:
    """Saves ``fig`` as ``<name><suffix>.png`` in ``directory`` and closes it."""
    fig.tight_layout()
    png = directory / f"{name}{suffix}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def goal(what: str, ratios: Sequence[tuple[float, str]], limit: float, unit: str = "x") -> str:
    """A sentence saying whether every ``(value, where)`` is within ``limit``, and the worst."""
    if not ratios:
        return f"{what}: not measured in this run."
    met = sum(ratio <= limit for ratio, _ in ratios)
    worst, where = max(ratios)
    verdict = "met" if met == len(ratios) else "missed"
    return (
        f"{what}: {verdict}, within it in {met} of {len(ratios)} cells"
        f" (worst {worst:.3f}{unit}, {where})."
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
