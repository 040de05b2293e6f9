"""CRI image pulls (``runtime.v1.ImageService/PullImage``, as kubelet and crictl make them)
into a private containerd, 1.6 and 2.1, whose CRI plugin unpacks into lazy2dfs, configured as
``deploy/containerd/config-1.6.toml`` and ``config-2.x.toml`` ship it (2.1 pulls through its
transfer service): eStargz layers are mounted lazily from the ``containerd.io/snapshot/cri.*``
labels alone, plain tar.gz layers fall back to a download, and containers run on both."""

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping

import pytest

from devstack.containerd import CONTAINERD_1_6, CRI_NAMESPACE, CRI_READY, RELEASES, Release
from devstack.images import BuiltImage, build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.snapshotter.labels import CRI_IMAGE_REF, CRI_LAYER_DIGEST, CRI_MANIFEST_DIGEST
from tests.support.stack import Stack, private_stack, release_id

CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
MODEL: Mapping[str, bytes] = {
    "model/weights.bin": os.urandom(5 * CHUNK + 321),
    "model/config.json": b'{"rows": 4, "cols": 2}',
    "model/vocab/tokens.txt": b"\n".join(b"token-%d" % n for n in range(2000)),
    "model/empty": b"",
}


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def cri_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """CRI on; the daemon's background fetch off, so that every GET of a layer blob in the
    registry's log is either containerd downloading it or a read fetching a chunk."""
    config = "[fetch]\nbackground = false\n"
    release: Release = request.param
    work = tmp_path_factory.mktemp("cri")
    with private_stack(work, config=config, cri=True, release=release) as stack:
        try:
            yield stack
        finally:
            stack.remove_containers()


def k8s_ctr(stack: Stack, *args: str) -> str:
    return stack.containerd.ctr(*args, namespace=CRI_NAMESPACE)


def run_in(stack: Stack, namespace: str, ref: str, name: str, script: str) -> str:
    argv = ["run", "--rm", "--snapshotter", "lazy2dfs", ref, name, "/bin/sh", "-c", script]
    return stack.containerd.ctr(*argv, namespace=namespace)


def read_all(stack: Stack, namespace: str, ref: str, name: str, files: Mapping[str, bytes]) -> None:
    """A container on lazy2dfs reads every file; each one's bytes are right."""
    paths = sorted(files)
    out = run_in(stack, namespace, ref, name, "sha256sum " + " ".join(f"/{p}" for p in paths))
    sums = {path: digest for digest, path in (line.split() for line in out.splitlines())}
    assert sums == {f"/{p}": hashlib.sha256(files[p]).hexdigest() for p in paths}


def chain_ids(image: BuiltImage) -> list[str]:
    """The snapshot names containerd unpacks the layers to (OCI image-spec chain IDs)."""
    chain = [image.layers[0].diff_id]
    for layer in image.layers[1:]:
        parent_and_diff = f"{chain[-1]} {layer.diff_id}".encode()
        chain.append("sha256:" + hashlib.sha256(parent_and_diff).hexdigest())
    return chain


def model_image() -> BuiltImage:
    return build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(MODEL, estargz=ESTARGZ)]
    )


def test_cri_runs_as_shipped_with_its_state_in_the_work_directory(cri_stack: Stack) -> None:
    containerd = cri_stack.containerd
    log = containerd.log()
    if containerd.release is CONTAINERD_1_6:
        started = [x for x in log.splitlines() if 'msg="Start cri plugin with config' in x]
        assert len(started) == 1
        for setting in (
            "Snapshotter:lazy2dfs ",
            "DisableSnapshotAnnotations:false ",
            f"RootDir:{containerd.workdir}/root/io.containerd.grpc.v1.cri ",
            f"StateDir:{containerd.workdir}/state/io.containerd.grpc.v1.cri}}",
            f"NetworkPluginConfDir:{containerd.workdir}/cni/net.d ",
            "StreamServerAddress:127.0.0.1 ",
            f"Registry:{{ConfigPath:{containerd.hosts_dir} ",  # the private hosts.toml directory
        ):
            assert setting in started[0]
    else:
        # 2.x logs the runtime half of CRI's config as JSON, and its image half piecemeal.
        [started] = re.findall(r'msg="starting cri plugin" config="(.*)"$', log, re.MULTILINE)
        runtime = json.loads(started.replace('\\"', '"'))
        assert runtime["rootDir"] == f"{containerd.workdir}/root/io.containerd.grpc.v1.cri"
        assert runtime["stateDir"] == f"{containerd.workdir}/state/io.containerd.grpc.v1.cri"
        assert runtime["cni"]["confDir"] == f"{containerd.workdir}/cni/net.d"
        root = cri_stack.snapshotter.root
        assert f'Get image filesystem path \\"{root}\\" for snapshotter \\"lazy2dfs\\"' in log
        # CRI pulls through the transfer service (with image labels), not its local puller.
        assert "Falling back to local image pull mode" not in log
    # CRI loads without CNI (image pulls never need it); that is its only complaint at start.
    startup = log[: log.index(CRI_READY)]
    errors = [line for line in startup.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "failed to load cni during init" in errors[0], errors


def test_cri_pull_of_an_estargz_image_mounts_every_layer_lazily(cri_stack: Stack) -> None:
    image = model_image()
    ref = cri_stack.push("cri/model:v1", image)

    assert cri_stack.cri_pull(ref) == image.config.digest

    # Only the manifest and config reached containerd's content store.
    content = k8s_ctr(cri_stack, "content", "ls", "--quiet").split()
    assert image.manifest.digest in content and image.config.digest in content
    for layer in image.layers:
        assert layer.blob.digest not in content
        # containerd never asked for the blob; the daemon read its footer and TOC by range.
        assert set(cri_stack.blob_gets(layer.blob.digest)) <= {206}
    mounted = cri_stack.daemon_events("layer mounted lazily")
    for layer in image.layers:
        lines = [line for line in mounted if f"layer={layer.blob.digest}" in line]
        assert len(lines) == 1, mounted
        assert f"image={ref}" in lines[0]
    assert not cri_stack.daemon_events("layer fallback")

    # The snapshots were committed from the labels CRI passed, not from lazy2dfs's own.
    for layer, chain_id in zip(image.layers, chain_ids(image), strict=True):
        info = json.loads(
            k8s_ctr(cri_stack, "snapshots", "--snapshotter", "lazy2dfs", "info", chain_id)
        )
        labels = info.get("Labels", {})
        assert labels[CRI_IMAGE_REF] == ref
        assert labels[CRI_LAYER_DIGEST] == layer.blob.digest
        assert labels[CRI_MANIFEST_DIGEST] == image.manifest.digest

    read_all(cri_stack, CRI_NAMESPACE, ref, "cri-reader", MODEL)
    # Every byte came by range request, none from a whole-blob download.
    weights = image.layers[1].blob.digest
    assert set(cri_stack.blob_gets(weights)) == {206}
    assert k8s_ctr(cri_stack, "content", "ls", "--quiet").split() == content


def test_lazy2dfs_pull_of_the_same_image_is_lazy_too(cri_stack: Stack) -> None:
    """Parity with lazy2dfs's own client (covered in depth by test_lazy_pull.py): the same
    layers, in containerd's default namespace, are mounted lazily and read the same bytes."""
    image = model_image()
    ref = cri_stack.push("cri/model:v1", image)
    assert "2 lazy, 0 present, 0 downloaded" in cri_stack.containerd.lazy_pull(ref)
    for layer in image.layers:
        assert layer.blob.digest not in cri_stack.ctr("content", "ls", "--quiet").split()
    read_all(cri_stack, "default", ref, "own-reader", MODEL)


def test_cri_pull_of_a_plain_gzip_image_falls_back_and_runs(cri_stack: Stack) -> None:
    files = {"plain/data.bin": os.urandom(300_000), "plain/readme": b"not seekable"}
    image = build_image([runtime_tree(), files])
    ref = cri_stack.push("cri/plain:v1", image)

    assert cri_stack.cri_pull(ref) == image.config.digest

    downloads = cri_stack.daemon_events("layer downloaded: not in a lazy format")
    for layer in image.layers:
        lines = [line for line in downloads if f"layer={layer.blob.digest}" in line]
        assert len(lines) == 1, downloads
        assert f"image={ref}" in lines[0] and "reason=not-lazy-format" in lines[0]
        # containerd downloaded the layer itself, and keeps it.
        assert 200 in cri_stack.blob_gets(layer.blob.digest)
    content = k8s_ctr(cri_stack, "content", "ls", "--quiet").split()
    for layer in image.layers:
        assert layer.blob.digest in content
    read_all(cri_stack, CRI_NAMESPACE, ref, "cri-plain", files)
