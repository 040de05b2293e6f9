"""`lazy2dfs pull` into a real containerd 1.6: layers mounted lazily, read by real containers."""

import hashlib
import os
from collections.abc import Iterator

import pytest

from devstack.images import build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
WEIGHTS = os.urandom(24 * CHUNK + 123)


@pytest.fixture(scope="module")
def lazy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Background fetch off, so what a read fetches is visible in the registry's log."""
    config = "[fetch]\nbackground = false\n"
    with private_stack(tmp_path_factory.mktemp("lazy"), config=config) as stack:
        yield stack


def test_lazy_pull_stores_no_layer_and_reads_fetch_only_what_they_need(
    lazy_stack: Stack,
) -> None:
    image = build_image(
        [
            build_layer(runtime_tree(), estargz=ESTARGZ),
            build_layer(
                {"model/weights.bin": WEIGHTS, "model/config.json": b"{}"}, estargz=ESTARGZ
            ),
        ]
    )
    ref = lazy_stack.push("lazy/model:v1", image)
    out = lazy_stack.containerd.lazy_pull(ref)
    assert "2 lazy, 0 present, 0 downloaded" in out
    content = lazy_stack.ctr("content", "ls", "--quiet").split()
    for layer in image.layers:
        assert layer.blob.digest not in content
    weights_blob = image.layers[1].blob.digest
    assert set(lazy_stack.blob_gets(weights_blob)) <= {206}
    fetched_before = len(lazy_stack.blob_gets(weights_blob))

    head = lazy_stack.run(ref, "head", "head -c 1000 /model/weights.bin | sha256sum")
    assert head.split()[0] == hashlib.sha256(WEIGHTS[:1000]).hexdigest()
    # One chunk's range request, not the 24 MiB blob.
    assert len(lazy_stack.blob_gets(weights_blob)) - fetched_before <= 2
    assert set(lazy_stack.blob_gets(weights_blob)) == {206}

    whole = lazy_stack.run(ref, "whole", "sha256sum /model/weights.bin")
    assert whole.split()[0] == hashlib.sha256(WEIGHTS).hexdigest()


def test_plain_gzip_layers_fall_back_to_a_download(lazy_stack: Stack) -> None:
    image = build_image([runtime_tree(), {"plain/file": b"not seekable"}])
    ref = lazy_stack.push("lazy/plain:v1", image)
    out = lazy_stack.containerd.lazy_pull(ref)
    assert "0 lazy" in out and "downloaded" in out
    assert lazy_stack.run(ref, "plain", "cat /plain/file") == "not seekable"
    log = lazy_stack.snapshotter.workdir.joinpath("lazy2dfs.log").read_text()
    assert 'event="layer fallback"' in log and "reason=no-toc-digest" in log


def test_removing_a_lazy_image_unmounts_its_layers(lazy_stack: Stack) -> None:
    image = build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer({"gc/x": b"x"}, estargz=ESTARGZ)]
    )
    ref = lazy_stack.push("lazy/gc:v1", image)
    lazy_stack.containerd.lazy_pull(ref)
    fuse = lazy_stack.snapshotter.root / "fuse"
    assert os.listdir(fuse)
    for name in lazy_stack.ctr("images", "ls", "--quiet").split():
        lazy_stack.ctr("images", "rm", "--sync", name)
    assert os.listdir(fuse) == []
    assert os.listdir(lazy_stack.snapshotter.root / "layers") == []
