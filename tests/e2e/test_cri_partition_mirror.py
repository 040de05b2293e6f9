"""2DFS partition tags pulled through CRI (``PullImage``, as kubelet calls it) from a registry
that knows nothing of partitions, through the daemon's partition mirror, configured the
documented way: the shipped ``hosts.toml`` naming ``lazy2dfs serve --mirror-address`` in front
of the registry. The container sees exactly the partition's files with the right bytes, and the
registry serves no blob of the other rows."""

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devstack.containerd import CRI_NAMESPACE
from devstack.images import build_2dfs_image, build_image, build_layer, stock_2dfs_image
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, cri_mirror_stack
from tests.support.tdfs import allotment_digests, partitioned_image

ROWS = [{f"model/row{row}.bin": os.urandom(200_000 + row)} for row in range(4)]
ESTARGZ = WriterOptions(chunk_size=64 * 1024, mtime=946684800)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with cri_mirror_stack(tmp_path_factory.mktemp("mirror")) as stack:
        yield stack


def blobs_served(stack: Stack, since: int) -> dict[str, list[int]]:
    """Blob digest → status codes of the registry's answers to GET and HEAD, since ``since``."""
    served: dict[str, list[int]] = {}
    for request in stack.registry.requests()[since:]:
        if "/blobs/sha256:" in request.path:
            served.setdefault(request.path.rsplit("/", 1)[-1], []).append(request.status)
    return served


def sees_exactly(stack: Stack, ref: str, name: str, files: Mapping[str, bytes]) -> None:
    """A container of the CRI-pulled image lists /model and sums every file in it."""
    out = stack.run(ref, name, "ls /model; sha256sum /model/*", CRI_NAMESPACE)
    names = sorted(p.rsplit("/", 1)[1] for p in files)
    assert out.split()[: len(names)] == names
    sums = dict(line.split()[::-1] for line in out.splitlines()[len(names) :])
    assert sums == {f"/{p}": hashlib.sha256(data).hexdigest() for p, data in files.items()}


def test_cri_pull_of_a_stock_layout_partition_downloads_only_its_allotments(
    mirrored: Stack,
) -> None:
    """The stock 2DFS builder's layout (tar.gz allotments, a field without sizes): containerd
    downloads the partition's allotments through the mirror, and nothing of the other rows."""
    stock = stock_2dfs_image([runtime_tree()], ROWS)
    ref = mirrored.push("held-out/stock:v1", stock) + "--1.0.2.0"
    since = len(mirrored.registry.requests())

    assert mirrored.cri_pull(ref) == partitioned_image(ref).config_digest

    served = blobs_served(mirrored, since)
    rows = [layer.blob.digest for layer in stock.allotments]
    assert rows[0] not in served and rows[3] not in served
    assert 200 in served[rows[1]] and 200 in served[rows[2]]
    files = {**ROWS[1], **ROWS[2]}
    sees_exactly(mirrored, ref, "stock-partition", files)
    served_lines = mirrored.daemon_events("partition served")
    assert any(f"image={ref}" in line for line in served_lines)


def test_cri_pull_of_a_lazy2dfs_build_partition_is_lazy(mirrored: Stack, tmp_path: Path) -> None:
    """``lazy2dfs build``'s layout: the mirror's manifest keeps the TOC annotations, so the
    snapshotter mounts every layer lazily from CRI's labels; no layer reaches containerd."""
    runtime = build_image([build_layer(runtime_tree(), estargz=ESTARGZ)])
    base = mirrored.push("lazy/base:v1", runtime)
    target = f"{mirrored.registry.host}/lazy/model:v1"
    build_2dfs_image(tmp_path, base, target, ROWS, ESTARGZ.chunk_size)
    ref = f"{target}--0.0.0.0--2.0.2.0"  # a union: rows 0 and 2
    expected = partitioned_image(ref)
    since = len(mirrored.registry.requests())

    assert mirrored.cri_pull(ref) == expected.config_digest

    content = mirrored.containerd.ctr("content", "ls", "--quiet", namespace=CRI_NAMESPACE).split()
    assert expected.manifest_digest in content and expected.config_digest in content
    mounted = mirrored.daemon_events("layer mounted lazily")
    layers = [json.loads(expected.manifest)["layers"][i]["digest"] for i in range(3)]
    for layer in layers:
        assert layer not in content  # containerd never downloaded it
        assert any(f"layer={layer}" in line and f"image={ref}" in line for line in mounted)
    sees_exactly(mirrored, ref, "lazy-partition", {**ROWS[0], **ROWS[2]})
    served = blobs_served(mirrored, since)
    for layer in layers:
        assert set(served[layer]) == {206}  # footer, TOC and chunks by range, no download
    rows = allotment_digests(target)
    assert rows[1] not in served and rows[3] not in served
