"""The model-ready benchmark's own parts: the page cache it counts, the plan it runs, the
ratios it reports, and a sample model a real safetensors loader reads."""

import json
import os
from pathlib import Path

import numpy
from safetensors import safe_open

from benchmarks.coldstack import EMULATED, LOOPBACK, page_cache_drops
from benchmarks.model_load import page_cache_bytes
from benchmarks.model_ready import Plan, parse_plan
from benchmarks.model_ready_report import write
from devstack.model import f16_like, sample_model

MIB = 1 << 20


def counted_without_foreign_drops(root: Path) -> int:
    """``page_cache_bytes(root)``, asked again if other work dropped the page cache meanwhile
    (the machine is shared; a drop there is not this code's doing)."""
    for _ in range(5):
        drops = page_cache_drops()
        counted = page_cache_bytes([root])
        if page_cache_drops() == drops:
            return counted
    raise AssertionError("the page cache was dropped during every attempt")


def test_a_cached_file_counts_once_however_many_links_and_an_evicted_one_not(
    tmp_path: Path,
) -> None:
    data = tmp_path / "weights"
    data.write_bytes(os.urandom(4 * MIB))
    os.link(data, tmp_path / "link")
    (tmp_path / "empty").touch()
    assert counted_without_foreign_drops(tmp_path) == 4 * MIB

    fd = os.open(data, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert counted_without_foreign_drops(tmp_path) == 0


def test_one_cell_from_the_command_line() -> None:
    cell = "--sizes 1G 256 --links loopback --formats gzip zstd --containers 1 4 --warm --trials 2"
    plan = parse_plan(cell.split())
    assert (plan.sizes, plan.links, plan.formats) == ((1024, 256), (LOOPBACK,), ("gzip", "zstd"))
    assert plan.states == ("warm",)
    assert plan.schedule(1024, LOOPBACK) == [(1, 0), (1, 1), (4, 0)]


def test_the_whole_matrix_runs_4_gib_once_and_several_containers_on_loopback_only() -> None:
    plan = Plan()
    assert plan.schedule(256, LOOPBACK) == [(1, 0), (1, 1), (1, 2), (2, 0), (4, 0)]
    assert plan.schedule(4096, EMULATED) == [(1, 0)]
    assert parse_plan([]) == plan


def phase(ready: float, cpu: float = 1.0) -> dict[str, float]:
    return {
        "pull_s": 1.0,
        "started_s": 1.5,
        "first_tensor_s": 0.5,
        "ready_s": ready,
        "daemon_cpu_s_per_gib": cpu,
        "daemon_peak_rss_mib": 100.0,
        "page_cache_mib": 1024.0,
        "fetched_mib": 900.0,
        "lowers": 5,
        "lowers_on_fuse": 0,
        "foreign_drops": 0,
    }


def test_ratios_to_overlayfs_are_taken_trial_by_trial(tmp_path: Path) -> None:
    runs = []
    for trial, (base, lazy) in enumerate([(20.0, 2.0), (40.0, 8.0), (30.0, 90.0)]):
        for fmt, cold in (("overlayfs", base), ("gzip", lazy)):
            image: dict[str, float | None] = {"complete_s": cold, "fetched_ratio": 1.0}
            image |= {"daemon_cpu_s_per_gib_whole": 1.0, "layers_verified": None}
            runs.append(
                {"size_mib": 1024, "link": LOOPBACK, "format": fmt, "containers": 1}
                | {"trial": trial, "cold": phase(cold), "warm": phase(1.0), "image": image}
            )
    formats = {"overlayfs": "overlayfs", "gzip": "lazy2dfs, gzip eStargz"}
    write({"plan": {"formats": formats}, "images": {}, "runs": runs}, tmp_path)
    table = (tmp_path / "model_ready.md").read_text()
    # Trial by trial 0.1x, 0.2x and 3x (a slow trial): the median 0.2x, not 8 / 30.
    assert "| 1 GiB | loopback | cold | 30.00 (20.00-40.00) | 8.00 (2.00-90.00) | 0.20x |" in table
    assert "≤ 0.20x overlayfs: met, within it in 1 of 1 cells (worst 0.200x" in table
    assert json.loads((tmp_path / "model_ready.json").read_text())["raw"]["runs"] == runs
    for figure in ("", "_cold_warm", "_cpu", "_bytes", "_memory"):
        assert (tmp_path / f"model_ready{figure}.png").stat().st_size > 0


def test_an_f16_sample_model_loads_front_to_back_with_the_safetensors_loader(
    tmp_path: Path,
) -> None:
    model = sample_model(4, layers=48, dtype="F16", weights=f16_like)
    tensors = 0
    for path, data in model.files.items():
        (tmp_path / Path(path).name).write_bytes(data)
        with safe_open(str(tmp_path / Path(path).name), framework="numpy") as loaded:
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            ends = []
            for name in loaded.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                tensor = loaded.get_tensor(name)
                assert tensor.dtype == numpy.float16
                assert 0.015 < float(tensor.astype(numpy.float32).std()) < 0.025
                ends.append(header[name]["data_offsets"][1])
                tensors += 1
            assert ends == sorted(ends)  # keys() order reads the file front to back
    assert tensors == model.tensors == 48
