"""`lazy2dfs pull` into a real containerd, 1.6 and 2.1: layers mounted lazily, read by real
containers; and ``ctr images pull --snapshotter lazy2dfs``, lazy on 2.1 only (its transfer
service passes the image labels; 1.6's ctr downloads every layer)."""

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from devstack.containerd import CONTAINERD_2_1, RELEASES, Release
from devstack.images import BuiltImage, build_image, build_layer
from devstack.model import runtime_tree
from devstack.process import lazy2dfs_argv
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


def test_plain_layers_are_downloaded_quietly_and_the_pull_says_why_and_what_to_do(
    lazy_stack: Stack,
) -> None:
    """A layer not in a lazy format (the plain base of a `lazy2dfs build` image) is downloaded
    as its image asks: the pull says so per layer with the fix, the daemon logs it at info and
    counts no fallback, so an alert on fallbacks stays quiet."""
    image = build_image([runtime_tree(), {"plain/file": b"not seekable"}])
    ref = lazy_stack.push("lazy/plain:v1", image)
    out = lazy_stack.containerd.lazy_pull(ref)
    assert "0 lazy, 0 present, 2 downloaded" in out, out
    for layer in image.layers:
        short = layer.blob.digest[7:19]
        (line,) = [ln for ln in out.splitlines() if f"{short} " in ln and "layer" in ln]
        assert "downloaded: not-lazy-format:" in line and "toc.digest" in line
    assert "lazy2dfs convert SRC DST" in out
    assert lazy_stack.run(ref, "plain", "cat /plain/file") == "not seekable"
    log = lazy_stack.snapshotter.workdir.joinpath("lazy2dfs.log").read_text()
    quiet = [line for line in log.splitlines() if "not in a lazy format" in line]
    assert len(quiet) == 2 and all("level=info" in line for line in quiet)
    assert "level=warning" not in log


def test_pull_json_reports_every_layer(lazy_stack: Stack) -> None:
    image = build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer({"j/x": b"x"}, estargz=ESTARGZ)]
    )
    ref = lazy_stack.push("lazy/json:v1", image)
    done = subprocess.run(
        lazy_stack.containerd.pull_argv(ref, "--json"),
        capture_output=True,
        text=True,
        timeout=300,
        env=lazy_stack.containerd.pull_env(),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The runtime layer may be present already, from another test's image.
    assert report["downloaded"] == 0 and report["lazy"] + report["present"] == 2
    layers = report["layers"]
    assert [layer["digest"] for layer in layers] == [layer.blob.digest for layer in image.layers]
    assert layers[1]["how"] == "lazy" and layers[0]["how"] in ("lazy", "present")


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


def test_pull_takes_containerd_address_and_namespace_as_ctr_does(lazy_stack: Stack) -> None:
    containerd = lazy_stack.containerd
    image = build_image([build_layer({"ns/x": b"x"}, estargz=ESTARGZ)])
    ref = lazy_stack.push("lazy/ns:v1", image)
    env = containerd.pull_env()
    env.update(CONTAINERD_ADDRESS=str(containerd.address), CONTAINERD_NAMESPACE="team-a")
    argv = [*lazy2dfs_argv(), "pull", "--config", str(lazy_stack.snapshotter.config_path), ref]
    for extra, namespace in (([], "team-a"), (["-n", "team-b"], "team-b")):
        done = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        assert ref in containerd.ctr("images", "ls", "--quiet", namespace=namespace).split()
    assert ref not in containerd.ctr("images", "ls", "--quiet").split()
