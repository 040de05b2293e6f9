"""A 2DFS model image built with `lazy2dfs build`, pulled as a partition with `lazy2dfs pull`
into a real containerd: the container sees exactly the selected rows, and the registry never
serves a blob of the others."""

import hashlib
import json
import os
import time
from pathlib import Path

from devstack.images import build_image, build_layer, stock_2dfs_image
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack
from tests.support.tdfs import allotment_digests, lazy2dfs

ROWS = {row: os.urandom(300_000 + row) for row in range(4)}
CHUNK = 64 * 1024


def test_partition_pull_runs_exactly_the_selected_rows(stack: Stack, tmp_path: Path) -> None:
    base = stack.push(
        "tdfs/base:v1",
        build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))]),
    )
    for row, data in ROWS.items():
        (tmp_path / f"row{row}.bin").write_bytes(data)
    spec = {
        "allotments": [
            {"src": f"row{row}.bin", "dst": f"/model/row{row}.bin", "row": row, "col": 0}
            for row in ROWS
        ]
    }
    (tmp_path / "2dfs.json").write_text(json.dumps(spec))
    target = f"{stack.registry.host}/tdfs/model:v1"
    lazy2dfs("build", "-f", str(tmp_path / "2dfs.json"), "--push", "--plain-http", base, target)
    digests = allotment_digests(target)
    assert sorted(digests) == [0, 1, 2, 3]

    partition = f"{target}--1.0.2.0"
    seen_before = len(stack.registry.requests())
    out = stack.containerd.lazy_pull(partition)
    assert "3 lazy, 0 present, 0 downloaded" in out
    listing = stack.run(partition, "rows", "ls /model; sha256sum /model/*")
    assert listing.split()[:2] == ["row1.bin", "row2.bin"]
    for row in (1, 2):
        assert hashlib.sha256(ROWS[row]).hexdigest() in listing
    fetched = {r.path.rsplit("/", 1)[-1] for r in stack.registry.requests()[seen_before:]}
    assert digests[0] not in fetched and digests[3] not in fetched
    assert digests[1] in fetched and digests[2] in fetched


def quiet(stack: Stack, seconds: float = 2.0, timeout: float = 60.0) -> None:
    """Returns once the registry has had no request for ``seconds`` (bounded)."""
    deadline = time.monotonic() + timeout
    count = len(stack.registry.requests())
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = len(stack.registry.requests())
        if now == count:
            return
        count = now


def test_v2_with_one_changed_allotment_fetches_only_new_chunks(
    stack: Stack, tmp_path: Path
) -> None:
    base = stack.push(
        "tdfs/base:v2",
        build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))]),
    )
    rows = {row: os.urandom(8 * CHUNK) for row in range(3)}
    spec = {
        "allotments": [
            {"src": f"row{row}.bin", "dst": f"/model/row{row}.bin", "row": row, "col": 0}
            for row in rows
        ]
    }
    (tmp_path / "2dfs.json").write_text(json.dumps(spec))

    def build(tag: str) -> str:
        for row, data in rows.items():
            (tmp_path / f"row{row}.bin").write_bytes(data)
        target = f"{stack.registry.host}/tdfs/update:{tag}"
        lazy2dfs(
            "build",
            "-f",
            str(tmp_path / "2dfs.json"),
            "--chunk-size",
            str(CHUNK),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--push",
            "--plain-http",
            base,
            target,
        )
        stack.containerd.lazy_pull(target)
        return target

    v1 = build("v1")
    stack.run(v1, "read-v1", "cat /model/* > /dev/null")
    quiet(stack)  # v1's background fetch is v1's traffic, not v2's
    old = allotment_digests(v1)
    rows[1] = rows[1][: 7 * CHUNK] + os.urandom(CHUNK)  # the last chunk of row 1 changes
    seen = len(stack.registry.requests())
    v2 = build("v2")
    out = stack.run(v2, "read-v2", "sha256sum /model/row1.bin")
    assert hashlib.sha256(rows[1]).hexdigest() in out
    new = allotment_digests(v2)
    assert new[0] == old[0] and new[2] == old[2] and new[1] != old[1]
    served: dict[str, int] = {}
    for request in stack.registry.requests()[seen:]:
        if request.method == "GET" and "/blobs/" in request.path:
            digest = request.path.rsplit("/", 1)[-1]
            served[digest] = served.get(digest, 0) + request.size
    assert old[0] not in served and old[2] not in served
    # Of the changed allotment: its footer and TOC, and one chunk — not its 8 chunks.
    assert 0 < served[new[1]] < 2 * CHUNK


def test_stock_builder_layout_falls_back_and_runs_the_selected_rows(stack: Stack) -> None:
    """A field as the Go 2DFS builder writes it: plain tar.gz allotments, no sizes, no TOC
    digests. The partition is still computed on the client; its allotments download."""
    stock = stock_2dfs_image(
        [runtime_tree()], [{f"model/row{row}.bin": ROWS[row]} for row in range(4)]
    )
    allotments = stock.allotments
    ref = stack.push("tdfs/stock:v1", stock)
    seen_before = len(stack.registry.requests())
    out = stack.containerd.lazy_pull(f"{ref}--1.0.2.0")
    assert "0 lazy, 0 present, 3 downloaded" in out  # base and two allotments
    listing = stack.run(f"{ref}--1.0.2.0", "stock", "ls /model; sha256sum /model/*")
    assert listing.split()[:2] == ["row1.bin", "row2.bin"]
    for row in (1, 2):
        assert hashlib.sha256(ROWS[row]).hexdigest() in listing
    fetched = {r.path.rsplit("/", 1)[-1] for r in stack.registry.requests()[seen_before:]}
    assert allotments[0].blob.digest not in fetched and allotments[3].blob.digest not in fetched
