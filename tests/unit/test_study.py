"""The study's own parts: the subset a command line asks for, the order runs go in, what an
interrupted run keeps, and the report's rule that a peer which was not lazy is compared with
nothing."""

import json
from pathlib import Path
from typing import Any

from benchmarks.coldstack import EMULATED, LOOPBACK
from benchmarks.study import MINILM, Plan, RunSpec, done_keys, parse_plan, schedule
from benchmarks.study_report import write


def test_a_subset_from_the_command_line() -> None:
    argv = "--sizes 256 minilm --links 1gbit --partitions 25 100 --snapshotters soci zstd"
    plan = parse_plan([*argv.split(), "--trials", "2", "--results", "/tmp/r.json"])
    assert plan.models == ("256", MINILM)
    assert (plan.links, plan.partitions) == ((EMULATED,), (25, 100))
    assert plan.snapshotters == ("soci", "zstd")
    assert plan.trials_for("256") == 2
    assert plan.results == Path("/tmp/r.json")


def test_trials_alternate_snapshotters_and_minilm_runs_whole() -> None:
    plan = Plan(links=(LOOPBACK,), snapshotters=("overlayfs", "zstd"))
    runs = schedule(plan, "256")
    assert len(runs) == 3 * 3 * 2  # trials x partitions x snapshotters
    assert [(r.trial, r.partition, r.snapshotter) for r in runs[:4]] == [
        (0, 25, "overlayfs"),
        (0, 25, "zstd"),
        (0, 50, "overlayfs"),
        (0, 50, "zstd"),
    ]
    assert {r.partition for r in schedule(plan, MINILM)} == {100}
    # Three trials where a run takes under a minute, one for the whole 4 GiB model.
    assert len(schedule(plan, "4096")) == (3 + 3 + 1) * 2


def phase(ready: float) -> dict[str, float]:
    return {
        "pull_s": 0.5,
        "started_s": 1.0,
        "first_tensor_s": 1.2,
        "ready_s": ready,
        "daemon_cpu_s": 2.0,
        "daemon_cpu_s_per_gib": 8.0,
        "daemon_peak_rss_mib": 80.0,
        "page_cache_mib": 256.0,
        "fetched_mib": 240.0,
        "lowers": 3,
        "lowers_on_fuse": 2,
        "foreign_drops": 0,
    }


def run(snapshotter: str, trial: int, ready: float, in_store: list[str]) -> dict[str, Any]:
    image: dict[str, float | None] = {
        "complete_s": ready,
        "daemon_cpu_s_whole": 3.0,
        "fetched_total_mib": 240.0,
    }
    image |= {"needed_mib": 240.0, "fetched_ratio": 1.0, "layers_verified": None}
    spec = RunSpec("256", LOOPBACK, 100, snapshotter, trial)
    return {**spec.__dict__, "cold": phase(ready), "warm": phase(1.0), "image": image} | {
        "layers_in_content_store": in_store,
        "disk_mib": 300.0,
    }


def test_a_peer_that_downloaded_a_layer_is_left_out_and_named(tmp_path: Path) -> None:
    runs = [
        run("overlayfs", 0, 10.0, ["sha256:aa"]),  # overlayfs downloads by design
        run("soci", 0, 2.0, []),
        run("overlayfs", 1, 20.0, ["sha256:aa"]),
        run("soci", 1, 99.0, ["sha256:aa"]),  # fell back to a download
    ]
    labels = {"overlayfs": "overlayfs", "soci": "SOCI 0.4.1"}
    raw = {"plan": {"snapshotters": labels, "models": {"256": "256 MiB"}}, "runs": runs}
    write(raw, tmp_path)
    table = (tmp_path / "study.md").read_text()
    # Only trial 1 of SOCI counts: 2 s, 0.2x overlayfs's 10 s in the same trial.
    assert "| 256 MiB | loopback | 100 % | cold | 15.00 (10.00-20.00) | 2.00 | 0.20x |" in table
    assert "| SOCI 0.4.1 | 1 of 2 |" in table
    assert "256 MiB, loopback, 100 %, SOCI 0.4.1, trial 2: 1 layer blob(s)" in table
    for figure in ("", "_partitions", "_bytes", "_cpu"):
        assert (tmp_path / f"study{figure}.png").stat().st_size > 0
    assert done_keys(json.loads((tmp_path / "study.json").read_text())["raw"]) == {
        RunSpec("256", LOOPBACK, 100, s, t).key for s in labels for t in (0, 1)
    }


def test_the_report_says_when_each_models_runs_were_measured(tmp_path: Path) -> None:
    """A study refreshed a model at a time mixes days: the table must not pass them as one."""
    runs = [run("overlayfs", 0, 10.0, []), run("soci", 0, 2.0, [])]
    runs[0]["measured"] = "2026-12-05T10:00:00Z"
    runs[1]["measured"] = "2026-12-07T21:00:00Z"
    old = run("overlayfs", 0, 10.0, []) | {"model": "1024"}  # from before runs were dated
    labels = {"overlayfs": "overlayfs", "soci": "SOCI 0.4.1"}
    models = {"256": "256 MiB", "1024": "1 GiB"}
    write({"plan": {"snapshotters": labels, "models": models}, "runs": [*runs, old]}, tmp_path)
    table = (tmp_path / "study.md").read_text()
    assert "256 MiB: 2026-12-05 to 2026-12-07; 1 GiB: undated runs." in table
