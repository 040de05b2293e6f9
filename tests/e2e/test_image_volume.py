"""Kubernetes image volumes (KEP-4639) on containerd 2.1 with lazy2dfs as CRI's snapshotter: a
pod whose container mounts a model image at /models, through the CRI calls kubelet 1.35 makes
(devstack/kubelet.py), gets the volume from lazy2dfs lazily: no layer blob reaches
containerd's content store, the registry serves only the chunks the container reads, the
bytes are right and the volume is read-only. The sandbox (pause) image is a local one."""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.containerd import CONTAINERD_2_1, CRI_NAMESPACE
from devstack.images import build_image, build_layer
from devstack.kubelet import Container, ImageVolume, Kubelet, Pod, VolumeMount, pause_image
from devstack.model import runtime_tree
from devstack.mounts import detach_under, mounts_under
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
SHARDS = {f"llama/shard-{n}.safetensors": os.urandom(6 * CHUNK + n) for n in range(3)}
HEAD = 1000
# The server reads shard 0 whole and the head of shard 1; shard 2 it never opens. Then it
# tries to write into the volume; the shell's complaint goes to standard output too, so that
# the CRI log (one file for both streams) keeps it in order.
SERVER = f"""sha256sum /models/llama/shard-0.safetensors
head -c {HEAD} /models/llama/shard-1.safetensors | sha256sum
ls /models/llama
{{ echo weights > /models/llama/new; }} 2>&1 || echo "write refused"
"""


@pytest.fixture(scope="module")
def pod_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Background fetch off: every range the registry serves is one a read asked for."""
    work = tmp_path_factory.mktemp("vol")
    config = "[fetch]\nbackground = false\n"
    with private_stack(
        work, config=config, cri=True, release=CONTAINERD_2_1, sandbox=pause_image()
    ) as stack:
        try:
            yield stack
        finally:
            stack.remove_containers()
    # containerd mounts image volumes on the host itself; a failed test may leave them.
    left = [mount.mount_point for mount in mounts_under(work)]
    detach_under(work)
    assert left == [], "mounts outlived the stack"


def test_a_pod_mounts_a_model_image_volume_lazily_read_only(
    pod_stack: Stack, tmp_path: Path
) -> None:
    model = build_image([build_layer(SHARDS, estargz=ESTARGZ)])
    [layer] = model.layers
    model_ref = pod_stack.push("models/llama:v1", model)
    app_ref = pod_stack.push("apps/server:v1", build_image([runtime_tree()]))
    pod = Pod(
        name="llama-server",
        containers=[
            Container(
                "server", app_ref, ["/bin/sh", "-c", SERVER], [VolumeMount("weights", "/models")]
            )
        ],
        volumes=[ImageVolume("weights", model_ref)],
    )
    with Kubelet(pod_stack.containerd.address, tmp_path / "pods") as kubelet:
        assert kubelet.version().runtime_version.startswith("2.1.")
        running = kubelet.run_pod(pod)
        try:
            status = kubelet.wait_exited(running, "server")
            out = kubelet.logs(running, "server")
            assert status.exit_code == 0, out
            volumes = pod_stack.containerd.state / "io.containerd.grpc.v1.cri" / "image-volumes"
            # containerd mounted what lazy2dfs returned: an overlay over its layers.
            [volume] = mounts_under(volumes / running.sandbox_id)
            assert volume.fs_type == "overlay"
            assert str(pod_stack.snapshotter.root) in ",".join(volume.super_options)
        finally:
            kubelet.remove_pod(running)

    # The volume is the image the pod asked for, pulled (not found) for this pod.
    assert running.image_refs["weights"] == model.config.digest
    lines = out.splitlines()
    shard = hashlib.sha256(SHARDS["llama/shard-0.safetensors"]).hexdigest()
    head = hashlib.sha256(SHARDS["llama/shard-1.safetensors"][:HEAD]).hexdigest()
    assert lines[0].split() == [shard, "/models/llama/shard-0.safetensors"]
    assert lines[1].split()[0] == head
    assert lines[2:5] == [f"shard-{n}.safetensors" for n in range(3)]
    assert "Read-only file system" in lines[5] and lines[6] == "write refused", out

    # Lazily: containerd holds the model's manifest and config, not its layer; the daemon
    # mounted the layer from the registry and fetched only what the server read.
    content = pod_stack.containerd.ctr("content", "ls", "--quiet", namespace=CRI_NAMESPACE)
    assert model.manifest.digest in content.split() and model.config.digest in content.split()
    assert layer.blob.digest not in content.split()
    mounted = pod_stack.daemon_events("layer mounted lazily")
    assert [line for line in mounted if f"layer={layer.blob.digest}" in line], mounted
    gets = [
        r
        for r in pod_stack.registry.requests()
        if r.method == "GET" and r.path.endswith(f"/blobs/{layer.blob.digest}")
    ]
    assert {r.status for r in gets} == {206}
    fetched = sum(r.size for r in gets)
    read = len(SHARDS["llama/shard-0.safetensors"])
    assert read <= fetched < read + 2 * CHUNK, (fetched, len(layer.blob.data))

    # StopPodSandbox unmounted the volume and removed its snapshot; the image stays.
    assert mounts_under(pod_stack.containerd.state / "io.containerd.grpc.v1.cri") == []
    snapshots = pod_stack.containerd.ctr(
        "snapshots", "--snapshotter", "lazy2dfs", "ls", namespace=CRI_NAMESPACE
    )
    assert "image-volumes" not in snapshots
