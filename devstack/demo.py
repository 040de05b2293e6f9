"""`make demo`: the point of lazy2dfs on one machine, with nothing but loopback.

It starts a private registry, containerd and lazy2dfs daemon, makes a sample model image
(safetensors weights, as plain tar.gz and as eStargz), then starts containers reading the
model — after a full pull onto containerd's overlayfs, and after a lazy pull onto lazy2dfs —
and prints the figures side by side. Everything it starts is stopped and everything it mounts is
unmounted, even on Ctrl-C; its last line says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.coldstart import METHODS, ColdStart, cold_start
from devstack.containerd import LocalContainerd
from devstack.images import build_image, build_layer
from devstack.model import runtime_tree, sample_model
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.estargz import WriterOptions

ESTARGZ = WriterOptions(chunk_size=4 << 20, mtime=946684800)


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo")
    parser.add_argument("--size-mib", type=int, default=384, help="weights size (384)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="lazy2dfs-demo-"))
    try:
        say(f"lazy2dfs demo: everything under {work}, on 127.0.0.1 only\n")
        model = sample_model(args.size_mib)
        say(
            f"1. sample model: {model.tensors} bf16 tensors, {args.size_mib} MiB in"
            f" {len(model.files)} safetensors files"
        )
        start = time.perf_counter()
        images = {
            "overlayfs": build_image([runtime_tree(), model.files]),
            "lazy2dfs": build_image(
                [
                    build_layer(runtime_tree(), estargz=ESTARGZ),
                    build_layer(model.files, estargz=ESTARGZ),
                ]
            ),
        }
        say(f"   built as plain tar.gz and as eStargz in {time.perf_counter() - start:.1f}s")
        with LocalRegistry(work / "registry") as registry:
            refs = {
                "overlayfs": registry.push("demo/model:v1-gzip", images["overlayfs"]),
                "lazy2dfs": registry.push("demo/model:v1", images["lazy2dfs"]),
            }
            say(f"2. pushed to a local registry: {refs['overlayfs']}, {refs['lazy2dfs']}")
            results: dict[str, ColdStart] = {}
            for method in METHODS:
                results[method] = _run_one(
                    work / method, refs[method], method, model.paths[0], model.first_tensor_end
                )
            _print_figures(results, args.size_mib)
            _partition(work / "2dfs", registry, model.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(
        f"\ndone: every process the demo started is stopped, every mount removed, {work}"
        " deleted. Left on this machine: the Debian packages `make deps` installed, and"
        " .venv in this checkout (.venv/bin/lazy2dfs). docs/quickstart.md goes on from here."
    )
    return 0


def _run_one(
    work: Path, ref: str, method: str, first_file: str, first_tensor_end: int
) -> ColdStart:
    with (
        LocalSnapshotter(work / "lazy2dfs") as daemon,
        LocalContainerd(work / "containerd", daemon.address) as containerd,
    ):
        how = "lazy2dfs pull (lazy)" if method == "lazy2dfs" else "ctr images pull (full)"
        say(f"3. {method}: private containerd 1.6, {how}, then `ctr run`")
        result = cold_start(containerd, ref, method, first_file, first_tensor_end)
        say(
            f"   pulled in {result.pull:.2f}s; first tensor read {result.first_read:.2f}s later;"
            f" a second container read all weights in {result.full_read:.2f}s"
        )
        if method == "lazy2dfs":
            content = containerd.ctr("content", "ls", "--quiet").split()
            say(
                f"   containerd's content store holds {len(content)} blobs: manifest and config,"
                " no layer"
            )
        return result


def _partition(work: Path, registry: LocalRegistry, files: dict[str, bytes]) -> None:
    """The same shards as a 2DFS field, one per row; a node that serves the first two pipeline
    stages pulls rows 0 and 1 only."""
    work.mkdir(parents=True)
    base = registry.push(
        "demo/runtime:v1", build_image([build_layer(runtime_tree(), estargz=ESTARGZ)])
    )
    allotments = []
    for row, (path, data) in enumerate(sorted(files.items())):
        (work / f"row{row}.safetensors").write_bytes(data)
        allotments.append({"src": f"row{row}.safetensors", "dst": f"/{path}", "row": row, "col": 0})
    (work / "2dfs.json").write_text(json.dumps({"allotments": allotments}))
    target = f"{registry.host}/demo/model-2dfs:v1"
    say(f"\n4. 2DFS: `lazy2dfs build` puts the {len(files)} shards in rows 0..{len(files) - 1}")
    _lazy2dfs(
        "build",
        "-q",
        "-f",
        str(work / "2dfs.json"),
        "--cache-dir",
        str(work / "cache"),
        "--push",
        base,
        target,
    )
    partition = f"{target}--0.0.1.0"
    with (
        LocalSnapshotter(work / "lazy2dfs") as daemon,
        LocalContainerd(work / "containerd", daemon.address) as containerd,
    ):
        served = sum(r.size for r in registry.requests() if r.method == "GET")
        start = time.perf_counter()
        containerd.lazy_pull(partition)
        listing = containerd.ctr(
            "run",
            "--rm",
            "--snapshotter",
            "lazy2dfs",
            partition,
            "demo-2dfs",
            "/bin/sh",
            "-c",
            "ls /model; cat /model/* > /dev/null",
        )
        seconds = time.perf_counter() - start
        fetched = sum(r.size for r in registry.requests() if r.method == "GET") - served
    say(f"   lazy2dfs pull {partition}: the container sees {' '.join(listing.split())}")
    say(
        f"   pulled and read in {seconds:.2f}s, fetching {fetched / 2**20:.0f} MiB of"
        f" {sum(len(d) for d in files.values()) / 2**20:.0f} MiB of weights"
    )


def _lazy2dfs(*args: str) -> None:
    subprocess.run([*lazy2dfs_argv(), *args], check=True, capture_output=True, timeout=1800)


def _print_figures(results: dict[str, ColdStart], size_mib: int) -> None:
    base, lazy = results["overlayfs"], results["lazy2dfs"]
    say(f"\nfigures for a {size_mib} MiB model (seconds, this machine, one run):")
    say(f"  {'':28}{'overlayfs':>12}{'lazy2dfs':>12}")
    for label, a, b in (
        ("pull", base.pull, lazy.pull),
        ("pull + first tensor", base.to_first_tensor, lazy.to_first_tensor),
        ("read all weights", base.full_read, lazy.full_read),
        ("total", base.to_first_tensor + base.full_read, lazy.to_first_tensor + lazy.full_read),
    ):
        say(f"  {label:28}{a:12.2f}{b:12.2f}")
    say(
        f"\nthe container read its first tensor {base.to_first_tensor / lazy.to_first_tensor:.1f}x"
        " sooner with lazy2dfs. `make bench` measures more sizes, with repeats."
    )


if __name__ == "__main__":
    sys.exit(main())
