"""A model rolled out to a fleet through one pull-through mirror, and an update of one row.

``devstack.fleet``: N nodes (1, 4, 8), each its own containerd and ``lazy2dfs serve`` with
private state, pull through one CNCF registry in proxy mode (hosts.toml) from an origin
behind an emulated 1 Gbit/s, 20 ms link. Every fleet starts cold: a new mirror, new nodes,
the page cache dropped.

* Rollout: each node pulls, then a container loads every tensor of the model with
  safetensors (``safe_open``, numpy), then checks every file's sha256. The time is from the
  start of the pulls to the moment the last node's loader has every tensor; bytes are what
  the origin and the mirror sent (their access logs). Whole model: every node loads the whole
  model. Partitions: node i serves row i mod 4 of the 2DFS field (``REF--r.0.r.0``), the
  2DFS use case of split serving.
* Update: on the fleet that rolled out the whole model, v2 (one row's weights changed, so
  one allotment) is pulled and loaded by every node; time until every node loaded v2, and
  the origin's bytes against the changed allotment's size.
* Mirror stopped: the whole-model rollout of 4 nodes with the mirror stopped a second in.

lazy2dfs: ``lazy2dfs pull --hosts-dir`` of the eStargz 2DFS image ``lazy2dfs build`` makes.
overlayfs: ``ctr images pull --hosts-dir`` of the same weights as plain tar.gz, one layer per
row (what the 2DFS registry serves for a partition of a stock field), whole blobs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks import report
from benchmarks.coldstack import drop_page_cache
from benchmarks.model_load import python_mounts
from benchmarks.tdfs_images import push_2dfs, push_stock
from devstack.fleet import Fleet, Node
from devstack.images import build_image, build_layer
from devstack.model import MODEL_DIR, runtime_tree, sample_model
from devstack.registry import LocalRegistry, Served
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.registry_client import (
    Partition,
)

SIZE_MIB = int(os.environ.get("FLEET_MODEL_MIB", "256"))
FLEETS = tuple(int(n) for n in os.environ.get("FLEET_NODES", "1,4,8").split(","))
ROWS = 4
CHANGED_ROW = 2
LINK = (1000.0, 20.0)
REPO = "bench/model"
METHODS = ("overlayfs", "lazy2dfs")
WHOLE, PARTITIONS, UPDATE, STOPPED = "whole model", "partitions", "update", "mirror stopped"
DIRECT = "no mirror"  # suffix of scenarios whose nodes reach the origin without the mirror
DIRECT_FLEETS = tuple(n for n in (1, 4) if n in FLEETS)
STOP_AFTER_SECONDS = 1.0
# A container's loader: every tensor through safetensors, then the time it finished.
LOADER = (
    "import glob, time\n"
    "from safetensors import safe_open\n"
    "for path in sorted(glob.glob('/model/*.safetensors')):\n"
    "    with safe_open(path, framework='numpy') as f:\n"
    "        for name in f.keys():\n"
    "            f.get_tensor(name)\n"
    "print('loaded', time.time())\n"
)


@dataclass(frozen=True)
class Version:
    """One version of the model as both images: per row its file, its sha256, and the two
    allotment blobs (digest, size)."""

    files: tuple[str, ...]
    sums: tuple[str, ...]
    lazy: tuple[tuple[str, int], ...]
    plain: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Pushed:
    v1: Version
    v2: Version
    base_lazy: int  # bytes of the base (runtime) layer of each image
    base_plain: int

    def sizes(self) -> dict[str, dict[str, Any]]:
        """Per method: the base layer's bytes, each row's allotment, the changed row of v2."""
        return {
            "lazy2dfs": {
                "base": self.base_lazy,
                "rows": [size for _, size in self.v1.lazy],
                "changed": self.v2.lazy[CHANGED_ROW][1],
            },
            "overlayfs": {
                "base": self.base_plain,
                "rows": [size for _, size in self.v1.plain],
                "changed": self.v2.plain[CHANGED_ROW][1],
            },
        }


def ref(origin: LocalRegistry, method: str, version: str, rows: Sequence[int]) -> str:
    if method == "lazy2dfs":
        return f"{origin.host}/{REPO}:{version}--{rows[0]}.0.{rows[-1]}.0"
    suffix = "" if len(rows) == ROWS else f"-row{rows[0]}"
    return f"{origin.host}/{REPO}:tar-{version}{suffix}"


def _push(origin: LocalRegistry, work: Path) -> Pushed:
    v1 = sample_model(SIZE_MIB, files=ROWS, layers=2 * ROWS, dtype="F16")
    files = tuple(v1.paths)
    changed = sample_model(SIZE_MIB, files=ROWS, layers=2 * ROWS, dtype="F16", seed=1)
    weights = {"v1": dict(v1.files), "v2": dict(v1.files)}
    weights["v2"][files[CHANGED_ROW]] = changed.files[files[CHANGED_ROW]]
    base_lazy = build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))
    base = origin.push(f"{REPO}-base:v1", build_image([base_lazy]))
    versions = {}
    for version, data in weights.items():
        tag = f"{REPO}:{version}"
        source, cache = work / f"build-{version}", work / "build-cache"
        lazy = push_2dfs(origin, source, base, data, files, tag, cache)
        rows = {f"{REPO}:tar-{version}-row{r}": [Partition(r, 0, r, 0)] for r in range(ROWS)}
        plain, base_plain = push_stock(origin, data, files, f"{REPO}:tar-{version}", rows)
        sums = tuple(hashlib.sha256(data[path]).hexdigest() for path in files)
        versions[version] = Version(files, sums, lazy, plain)
    return Pushed(versions["v1"], versions["v2"], len(base_lazy.blob.data), base_plain)


def _pull_and_load(
    fleet: Fleet, node: Node, image: str, method: str, version: Version, rows: Sequence[int]
) -> float:
    """Pulls ``image`` on ``node`` and loads it in a container; the wall-clock time (epoch)
    its loader had every tensor. Raises if a file's bytes are not the model's."""
    if method == "lazy2dfs":
        node.containerd.lazy_pull(image, fleet.hosts_dir)
    else:
        node.containerd.ctr(
            "images", "pull", "--hosts-dir", str(fleet.hosts_dir),
            "--snapshotter", "overlayfs", image,
        )  # fmt: skip
    script = f'{sys.executable} -c "{LOADER}" && sha256sum /{MODEL_DIR}/*'
    out = node.containerd.ctr(
        "run", "--rm", "--snapshotter", method, *python_mounts(), image,
        f"{node.name}-{int(time.time() * 1000)}", "/bin/sh", "-c", script,
    )  # fmt: skip
    lines = out.split("\n")
    loaded = float(next(line for line in lines if line.startswith("loaded ")).split()[1])
    found = {line.split()[1]: line.split()[0] for line in lines if line.count(" ") == 2}
    wanted = {f"/{version.files[r]}": version.sums[r] for r in rows}
    if found != wanted:
        raise RuntimeError(f"{node.name}: {image} has wrong bytes: {found} != {wanted}")
    return loaded


def _fleet_run(
    fleet: Fleet,
    origin: LocalRegistry,
    method: str,
    version: Version,
    rows_of: Callable[[int], Sequence[int]],
    version_name: str,
) -> dict[str, float]:
    """Every node pulls and loads at once; seconds until the last loaded, bytes sent."""
    mirror = fleet.mirror
    sent, relayed = Served(origin), (Served(mirror) if mirror is not None else None)
    emulator = fleet.emulator
    carried = emulator.from_target if emulator is not None else 0
    start = time.time()
    jobs = [
        (node, ref(origin, method, version_name, rows_of(i)), rows_of(i))
        for i, node in enumerate(fleet.nodes)
    ]
    loaded = fleet.each(
        lambda job: _pull_and_load(fleet, job[0], job[1], method, version, job[2]), jobs
    )
    up = relayed is not None and mirror is not None and mirror.process is not None
    relayed_bytes = relayed.bytes() if up and relayed is not None else 0
    link = emulator.from_target - carried if emulator is not None else 0
    return {
        "seconds": max(loaded) - start,
        "origin": sent.bytes(),
        "link": link,
        "mirror": relayed_bytes,
    }


def _trials(origin: LocalRegistry, pushed: Pushed, work: Path) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    everything = tuple(range(ROWS))
    for nodes in FLEETS:
        for method in METHODS:
            key = f"{nodes}/{method}"
            drop_page_cache()
            where = work / f"w{nodes}{method[0]}"
            with Fleet(where, origin, nodes, LINK) as fleet:
                raw[f"{WHOLE}/{key}"] = _fleet_run(
                    fleet, origin, method, pushed.v1, lambda _: everything, "v1"
                )
                raw[f"{UPDATE}/{key}"] = _fleet_run(
                    fleet, origin, method, pushed.v2, lambda _: everything, "v2"
                )
            shutil.rmtree(where, ignore_errors=True)
            drop_page_cache()
            where = work / f"p{nodes}{method[0]}"
            with Fleet(where, origin, nodes, LINK) as fleet:
                raw[f"{PARTITIONS}/{key}"] = _fleet_run(
                    fleet, origin, method, pushed.v1, lambda i: (i % ROWS,), "v1"
                )
            shutil.rmtree(where, ignore_errors=True)
            if nodes in DIRECT_FLEETS:
                drop_page_cache()
                where = work / f"d{nodes}{method[0]}"
                with Fleet(where, origin, nodes, LINK, mirror=False) as fleet:
                    raw[f"{WHOLE}, {DIRECT}/{key}"] = _fleet_run(
                        fleet, origin, method, pushed.v1, lambda _: everything, "v1"
                    )
                    raw[f"{UPDATE}, {DIRECT}/{key}"] = _fleet_run(
                        fleet, origin, method, pushed.v2, lambda _: everything, "v2"
                    )
                shutil.rmtree(where, ignore_errors=True)
            print(f"fleet {key}: done", flush=True)
    for method in METHODS:
        drop_page_cache()
        where = work / f"s{method[0]}"
        with Fleet(where, origin, 4, LINK) as fleet:
            stop = threading.Timer(STOP_AFTER_SECONDS, fleet.stop_mirror)
            stop.start()
            result: dict[str, Any]
            try:
                result = {
                    **_fleet_run(fleet, origin, method, pushed.v1, lambda _: everything, "v1"),
                    "failed": 0,
                }
            except Exception as exc:  # what a user would see: the rollout failed
                result = {"failed": 1, "error": str(exc)[-400:]}
            finally:
                stop.cancel()
        raw[f"{STOPPED}/4/{method}"] = result
        shutil.rmtree(where, ignore_errors=True)
    return raw


def run() -> Path:
    with tempfile.TemporaryDirectory(prefix="l2d-fleet-") as tmp:
        work = Path(tmp)
        with LocalRegistry(work / "origin") as origin:
            pushed = _push(origin, work)
            raw = {"sizes": pushed.sizes(), "trials": _trials(origin, pushed, work)}
    return _report(raw)


def _needed(sizes: Mapping[str, Any], rows: set[int]) -> int:
    """Distinct bytes a fleet needs: the base layer and the union of its nodes' rows."""
    return int(sizes["base"]) + sum(int(sizes["rows"][r]) for r in rows)


def _report(raw: dict[str, Any]) -> Path:
    """Tables and plots from ``raw`` (``{"sizes": …, "trials": …}``, as the JSON keeps it)."""
    mib = 2**20
    sizes, trials = raw["sizes"], raw["trials"]
    everything = set(range(ROWS))
    rows: list[list[Any]] = []

    def row(scenario: str, nodes: int, method: str, needed: int, per: str) -> list[Any]:
        cell = trials[f"{scenario}/{nodes}/{method}"]
        base = trials[f"{scenario}/{nodes}/overlayfs"]
        return [
            scenario,
            nodes,
            method,
            cell["seconds"],
            cell["origin"] / mib,
            f"{cell['origin'] / needed:.2f}x{per}",
            f"{cell['link'] / needed:.2f}x" if "link" in cell else "",
            cell["mirror"] / mib if "mirror" in cell and DIRECT not in scenario else "",
            f"{cell['origin'] / base['origin']:.2f}x",
        ]

    for scenario, fleets in (
        (WHOLE, FLEETS),
        (PARTITIONS, FLEETS),
        (f"{WHOLE}, {DIRECT}", DIRECT_FLEETS),
    ):
        for nodes in fleets:
            spread = everything if scenario != PARTITIONS else {i % ROWS for i in range(nodes)}
            for method in METHODS:
                rows.append(row(scenario, nodes, method, _needed(sizes[method], spread), ""))
    for scenario, fleets in ((UPDATE, FLEETS), (f"{UPDATE}, {DIRECT}", DIRECT_FLEETS)):
        for nodes in fleets:
            for method in METHODS:
                changed = int(sizes[method]["changed"])
                rows.append(row(scenario, nodes, method, changed, " of the changed row"))
    for method in METHODS:
        cell = trials[f"{STOPPED}/4/{method}"]
        if cell["failed"]:
            rows.append([STOPPED, 4, method, f"failed: {cell['error']}", "", "", "", ""])
            continue
        needed = _needed(sizes[method], everything)
        rows.append(
            [
                STOPPED, 4, method, cell["seconds"], cell["origin"] / mib,
                f"{cell['origin'] / needed:.2f}x", f"{cell['link'] / needed:.2f}x", "", "",
            ]
        )  # fmt: skip
    image = {m: _needed(sizes[m], everything) / mib for m in METHODS}
    notes = [
        f"Model: {SIZE_MIB} MiB of F16 safetensors weights in {ROWS} files, one per 2DFS row;"
        f" the whole image is {image['lazy2dfs']:.1f} MiB as eStargz,"
        f" {image['overlayfs']:.1f} MiB as tar.gz. The origin is behind an emulated"
        f" {LINK[0]:g} Mbit/s, {LINK[1]:g} ms link; the nodes reach the mirror on loopback"
        f" ('{DIRECT}': the nodes reach the origin over that link, without a mirror).",
        "Seconds: from the start of the pulls until the last node's container had loaded every"
        " tensor (safetensors, numpy); every file's sha256 was then checked in the container."
        " Origin and mirror MiB: GET bodies in their access logs. 'Origin per needed byte':"
        " origin bytes per distinct byte the fleet needs (the image; for partitions the base"
        " and the rows its nodes serve, node i row i mod 4), or per byte of the changed row."
        " 'On the origin's link': what the origin sent onto the emulated link, per needed"
        " byte; the access log also counts what its handler had written into the kernel's"
        " send buffer when a connection was closed (up to ~2 MB each: the origin's kernel"
        " sees loopback, not the link), which never left the machine."
        " Last column: lazy2dfs against overlayfs in the same run.",
        "The CNCF registry in proxy mode fetches a blob it does not hold from its origin once"
        " for its own store and once more for every request that arrives before it holds it:"
        " one plain pull costs the origin 2x, N pulls at once N+1 times. lazy2dfs sends a"
        " mirror one request per blob until the mirror serves ranges, and keeps the whole blob"
        " that request brings (see docs/fleets.md).",
        f"Update: v1 to v2 with row {CHANGED_ROW} changed, on the fleet that rolled out v1.",
        f"Mirror stopped: 4 nodes, whole model, the mirror's process ended"
        f" {STOP_AFTER_SECONDS:g} s after the pulls began.",
    ]
    columns = [
        "scenario",
        "nodes",
        "method",
        "seconds to the last replica loaded",
        "origin MiB",
        "origin per needed byte",
        "on the origin's link, per needed byte",
        "mirror MiB",
        "origin, lazy2dfs / overlayfs",
    ]
    title = "A model rolled out through one pull-through mirror, and an update of one row"
    report.write_tables("fleet", title, columns, rows, raw, notes)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for axis, (what, label) in zip(
        axes[:2],
        (("seconds", "seconds to the last replica"), ("origin", "origin MiB")),
        strict=True,
    ):
        for scenario in (WHOLE, PARTITIONS):
            for method in METHODS:
                values = [trials[f"{scenario}/{n}/{method}"][what] for n in FLEETS]
                if what == "origin":
                    values = [v / mib for v in values]
                style = "-" if method == "lazy2dfs" else "--"
                axis.plot(FLEETS, values, style, marker="o", label=f"{method}, {scenario}")
        axis.set_xlabel("nodes")
        axis.set_ylabel(label)
        axis.set_xticks(FLEETS)
        axis.legend(fontsize=7)
    width = 0.35
    for i, method in enumerate(METHODS):
        values = [trials[f"{UPDATE}/{n}/{method}"]["origin"] / mib for n in FLEETS]
        axes[2].bar([x + i * width for x in range(len(FLEETS))], values, width, label=method)
    axes[2].set_xticks([x + width / 2 for x in range(len(FLEETS))])
    axes[2].set_xticklabels([f"{n} nodes" for n in FLEETS])
    axes[2].set_ylabel("origin MiB for the update")
    axes[2].axhline(
        int(sizes["lazy2dfs"]["changed"]) / mib,
        color="grey",
        linestyle=":",
        label="the changed row",
    )
    axes[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return report.save_figure("fleet", fig)
