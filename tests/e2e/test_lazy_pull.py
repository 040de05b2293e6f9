"""`lazy2dfs pull` into a real containerd, 1.6 and 2.1: layers mounted lazily, read by real
containers; and ``ctr images pull --snapshotter lazy2dfs``, lazy on 2.1 only (its transfer
service passes the image labels; 1.6's ctr downloads every layer)."""

import hashlib
import os
from collections.abc import Iterator

import pytest

from devstack.containerd import CONTAINERD_2_1, RELEASES, Release
from devstack.images import BuiltImage, build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack, release_id

CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
WEIGHTS = os.urandom(24 * CHUNK + 123)


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def lazy_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Background fetch off, so what a read fetches is visible in the registry's log."""
    config = "[fetch]\nbackground = false\n"
    release: Release = request.param
    with private_stack(tmp_path_factory.mktemp("lazy"), config=config, release=release) as stack:
        yield stack


def estargz_model(files: dict[str, bytes]) -> BuiltImage:
    return build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(files, estargz=ESTARGZ)]
    )


def test_lazy_pull_stores_no_layer_and_reads_fetch_only_what_they_need(
    lazy_stack: Stack,
) -> None:
    image = estargz_model({"model/weights.bin": WEIGHTS, "model/config.json": b"{}"})
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
    assert any(
        "reason=no-toc-digest" in line for line in lazy_stack.daemon_events("layer fallback")
    )


def test_removing_a_lazy_image_unmounts_its_layers(lazy_stack: Stack) -> None:
    ref = lazy_stack.push("lazy/gc:v1", estargz_model({"gc/x": b"x"}))
    lazy_stack.containerd.lazy_pull(ref)
    fuse = lazy_stack.snapshotter.root / "fuse"
    assert os.listdir(fuse)
    for name in lazy_stack.ctr("images", "ls", "--quiet").split():
        lazy_stack.ctr("images", "rm", "--sync", name)
    assert os.listdir(fuse) == []
    assert os.listdir(lazy_stack.snapshotter.root / "layers") == []


def test_ctr_pull_is_lazy_through_the_transfer_service_of_2_1(lazy_stack: Stack) -> None:
    """``ctr images pull --snapshotter lazy2dfs``: on 2.1 the transfer service unpacks with the
    image labels (config-2.x.toml), so no layer is downloaded; 1.6's ctr downloads every layer
    and passes none. The bytes are right either way."""
    files = {"model/weights.bin": os.urandom(6 * CHUNK + 7), "model/config.json": b'{"a": 1}'}
    image = estargz_model(files)
    ref = lazy_stack.push("lazy/ctr:v1", image)
    lazy_stack.ctr("images", "pull", "--plain-http", "--snapshotter", "lazy2dfs", ref)

    content = lazy_stack.ctr("content", "ls", "--quiet").split()
    assert image.manifest.digest in content and image.config.digest in content
    if lazy_stack.containerd.release is CONTAINERD_2_1:
        mounted = lazy_stack.daemon_events("layer mounted lazily")
        for layer in image.layers:
            assert layer.blob.digest not in content
            assert set(lazy_stack.blob_gets(layer.blob.digest)) <= {206}
            assert [line for line in mounted if f"layer={layer.blob.digest}" in line], mounted
    else:
        for layer in image.layers:
            assert layer.blob.digest in content
            assert 200 in lazy_stack.blob_gets(layer.blob.digest)
    out = lazy_stack.run(ref, "ctr-pulled", "sha256sum /model/weights.bin /model/config.json")
    assert out.split()[0::2] == [hashlib.sha256(d).hexdigest() for d in files.values()]
