"""containerd 1.6 and 2.1 pulling (``ctr images pull``) and running images on lazy2dfs as an
ordinary snapshotter, and collecting them."""

import hashlib
import os

from devstack.images import build_image
from devstack.model import runtime_tree
from tests.support.stack import Stack

WEIGHTS = os.urandom(1 << 20)


def test_pull_and_run_reads_and_writes(release_stack: Stack) -> None:
    image = build_image(
        [
            runtime_tree(),
            {"model/weights.bin": WEIGHTS, "model/old.txt": b"old"},
            {"model/.wh.old.txt": b"", "model/config.json": b'{"layers": 2}'},
        ]
    )
    ref = release_stack.push("e2e/model:v1", image)
    release_stack.ctr("images", "pull", "--plain-http", "--snapshotter", "lazy2dfs", ref)
    out = release_stack.run(
        ref,
        "reader",
        "sha256sum /model/weights.bin; cat /model/config.json; ls /model;"
        " echo written > /model/new.txt; cat /model/new.txt",
    )
    assert hashlib.sha256(WEIGHTS).hexdigest() in out
    assert '{"layers": 2}' in out
    assert "old.txt" not in out
    assert out.rstrip().endswith("written")


def test_image_with_128_layers_runs(release_stack: Stack) -> None:
    layers = [runtime_tree()] + [{f"layers/{n:03d}": str(n).encode()} for n in range(127)]
    ref = release_stack.push("e2e/deep:v1", build_image(layers))
    release_stack.ctr("images", "pull", "--plain-http", "--snapshotter", "lazy2dfs", ref)
    out = release_stack.run(ref, "deep", "ls /layers | wc -l; cat /layers/000 /layers/126")
    assert out.split() == ["127", "0126"]


def test_removing_images_and_gc_leaves_no_snapshot_directory(release_stack: Stack) -> None:
    image = build_image([runtime_tree(), {"gc/file": b"collect me"}])
    ref = release_stack.push("e2e/gc:v1", image)
    release_stack.ctr("images", "pull", "--plain-http", "--snapshotter", "lazy2dfs", ref)
    assert release_stack.snapshot_dirs()
    for name in release_stack.ctr("images", "ls", "--quiet").split():
        release_stack.ctr("images", "rm", "--sync", name)
    assert release_stack.ctr("snapshots", "--snapshotter", "lazy2dfs", "ls").split() == [
        "KEY",
        "PARENT",
        "KIND",
    ]
    assert release_stack.snapshot_dirs() == []


def test_restart_keeps_committed_snapshots_usable(release_stack: Stack) -> None:
    image = build_image([runtime_tree(), {"persist/file": b"survives restarts"}])
    ref = release_stack.push("e2e/restart:v1", image)
    release_stack.ctr("images", "pull", "--plain-http", "--snapshotter", "lazy2dfs", ref)
    release_stack.restart_snapshotter(crash=False)
    assert release_stack.run(ref, "after-restart", "cat /persist/file") == "survives restarts"
    release_stack.restart_snapshotter(crash=True)
    assert release_stack.run(ref, "after-kill", "cat /persist/file") == "survives restarts"
