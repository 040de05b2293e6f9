"""2DFS partition tags through every containerd client, from a registry that knows nothing of
partitions, through the daemon's partition mirror configured the documented way (the shipped
``hosts.toml`` naming ``lazy2dfs serve --mirror-address`` in front of the registry), on
containerd 1.6 and 2.1: CRI's PullImage and a pod naming the partition (the calls kubelet
makes), ``ctr image pull`` (2.1: through the transfer service), and on 2.1 an image volume.
Each container sees exactly the partition's files with the right bytes, and the registry
serves no blob of the other rows."""

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.containerd import CONTAINERD_2_1, CRI_NAMESPACE, RELEASES
from devstack.images import build_2dfs_image, build_image, build_layer, stock_2dfs_image
from devstack.kubelet import (
    Container,
    ImageVolume,
    Kubelet,
    Pod,
    RunningPod,
    VolumeMount,
    pause_image,
)
from devstack.model import runtime_tree
from devstack.mounts import detach_under, mounts_under
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, cri_mirror_stack, release_id
from tests.support.tdfs import allotment_digests, partitioned_image

CHUNK = 64 * 1024
LIST_AND_SUM = "ls {dir}; sha256sum {dir}/*"


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def mirrored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("mirror")
    with cri_mirror_stack(work, request.param, sandbox=pause_image()) as stack:
        yield stack
    # containerd mounts image volumes on the host itself; a failed test may leave them.
    left = [mount.mount_point for mount in mounts_under(work)]
    detach_under(work)
    assert left == [], "mounts outlived the stack"


def fresh_rows() -> list[dict[str, bytes]]:
    """Four rows of new bytes: no test finds another's chunks in the daemon's cache."""
    return [{f"model/row{row}.bin": os.urandom(200_000 + row)} for row in range(4)]


@dataclass(frozen=True)
class Pushed2dfs:
    ref: str  # without partition
    rows: list[dict[str, bytes]]
    allotments: dict[int, str]  # row → blob digest
    lazy: bool  # allotments lazy2dfs can mount (TOC digests in the field)


def push_stock(stack: Stack) -> Pushed2dfs:
    """The stock 2DFS builder's layout: tar.gz allotments, a field without sizes."""
    rows = fresh_rows()
    stock = stock_2dfs_image([runtime_tree()], rows)
    ref = stack.push("held-out/stock:v1", stock)
    allotments = {row: layer.blob.digest for row, layer in enumerate(stock.allotments)}
    return Pushed2dfs(ref, rows, allotments, lazy=False)


def push_lazy(stack: Stack, work: Path) -> Pushed2dfs:
    """Rows as ``lazy2dfs build`` makes them (zstd:chunked allotments, TOC digests in the
    field), on a lazily loadable runtime."""
    runtime = build_image([build_layer(runtime_tree(), estargz=WriterOptions(chunk_size=CHUNK))])
    base = stack.push("lazy/base:v1", runtime)
    target = f"{stack.registry.host}/lazy/model:v1"
    rows = fresh_rows()
    build_2dfs_image(work, base, target, rows, CHUNK)
    return Pushed2dfs(target, rows, allotment_digests(target), lazy=True)


@pytest.fixture
def lazy_model(mirrored: Stack, tmp_path: Path) -> Pushed2dfs:
    return push_lazy(mirrored, tmp_path)


@pytest.fixture(params=["stock layout", "lazy2dfs build"])
def model(request: pytest.FixtureRequest, mirrored: Stack, tmp_path: Path) -> Pushed2dfs:
    return (
        push_lazy(mirrored, tmp_path) if request.param == "lazy2dfs build" else push_stock(mirrored)
    )


def blobs_served(stack: Stack, since: int) -> dict[str, list[int]]:
    """Blob digest → status codes of the registry's answers to GET and HEAD, since ``since``."""
    served: dict[str, list[int]] = {}
    for request in stack.registry.requests()[since:]:
        if "/blobs/sha256:" in request.path:
            served.setdefault(request.path.rsplit("/", 1)[-1], []).append(request.status)
    return served


def check_listing(out: str, directory: str, files: Mapping[str, bytes]) -> None:
    """``out`` of ``LIST_AND_SUM`` shows exactly ``files`` (``model/…`` paths) with their
    bytes, under ``directory``."""
    names = sorted(p.rsplit("/", 1)[1] for p in files)
    lines = out.splitlines()
    assert lines[: len(names)] == names, out
    sums = dict(line.split()[::-1] for line in lines[len(names) :])
    assert sums == {
        f"{directory}/{p.rsplit('/', 1)[1]}": hashlib.sha256(data).hexdigest()
        for p, data in files.items()
    }


def sees_exactly(
    stack: Stack, ref: str, name: str, files: Mapping[str, bytes], namespace: str = CRI_NAMESPACE
) -> None:
    out = stack.run(ref, name, LIST_AND_SUM.format(dir="/model"), namespace)
    check_listing(out, "/model", files)


def run_pod(stack: Stack, pod: Pod, logs: Path) -> tuple[RunningPod, str]:
    """Runs ``pod`` (one container) as kubelet would, until its container exited with 0;
    removes it, and returns what ran and the container's output."""
    [container] = pod.containers
    with Kubelet(stack.containerd.address, logs / "pods") as kubelet:
        running = kubelet.run_pod(pod)
        try:
            status = kubelet.wait_exited(running, container.name)
            out = kubelet.logs(running, container.name)
        finally:
            kubelet.remove_pod(running)
    assert status.exit_code == 0, out
    return running, out


def layer_digests(ref: str) -> list[str]:
    return [layer["digest"] for layer in json.loads(partitioned_image(ref).manifest)["layers"]]


def test_cri_pull_of_a_stock_layout_partition_downloads_only_its_allotments(
    mirrored: Stack,
) -> None:
    """The stock 2DFS builder's layout (tar.gz allotments, a field without sizes): containerd
    downloads the partition's allotments through the mirror, and nothing of the other rows."""
    stock = push_stock(mirrored)
    ref = f"{stock.ref}--1.0.2.0"
    since = len(mirrored.registry.requests())

    assert mirrored.cri_pull(ref) == partitioned_image(ref).config_digest

    served = blobs_served(mirrored, since)
    blobs = stock.allotments
    assert blobs[0] not in served and blobs[3] not in served
    assert 200 in served[blobs[1]] and 200 in served[blobs[2]]
    sees_exactly(mirrored, ref, "stock-partition", {**stock.rows[1], **stock.rows[2]})
    assert any(f"image={ref}" in line for line in mirrored.daemon_events("partition served"))


def test_cri_pull_of_a_lazy2dfs_build_partition_is_lazy(
    mirrored: Stack, lazy_model: Pushed2dfs
) -> None:
    """The mirror's manifest keeps the TOC annotations, so the snapshotter mounts every layer
    lazily from CRI's labels (on 2.1, through the transfer service); no layer reaches
    containerd."""
    ref = f"{lazy_model.ref}--0.0.0.0--2.0.2.0"  # a union: rows 0 and 2
    expected = partitioned_image(ref)
    since = len(mirrored.registry.requests())

    assert mirrored.cri_pull(ref) == expected.config_digest

    content = mirrored.containerd.ctr("content", "ls", "--quiet", namespace=CRI_NAMESPACE).split()
    assert expected.manifest_digest in content and expected.config_digest in content
    mounted = mirrored.daemon_events("layer mounted lazily")
    layers = layer_digests(ref)
    for layer in layers:
        assert layer not in content  # containerd never downloaded it
        assert any(f"layer={layer}" in line and f"image={ref}" in line for line in mounted)
    sees_exactly(mirrored, ref, "lazy-partition", {**lazy_model.rows[0], **lazy_model.rows[2]})
    served = blobs_served(mirrored, since)
    for layer in layers:
        assert set(served[layer]) == {206}  # footer, TOC and chunks by range, no download
    blobs = lazy_model.allotments
    assert blobs[1] not in served and blobs[3] not in served


def test_a_pod_naming_a_partition_runs_it(
    mirrored: Stack, lazy_model: Pushed2dfs, tmp_path: Path
) -> None:
    """A pod spec with ``image: registry/model:v1--1.0.2.0``, run through the CRI calls
    kubelet makes (sandbox, ImageStatus, PullImage, CreateContainer, StartContainer)."""
    ref = f"{lazy_model.ref}--1.0.2.0"
    since = len(mirrored.registry.requests())
    command = ["/bin/sh", "-c", LIST_AND_SUM.format(dir="/model")]
    pod = Pod(name="stage-1", containers=[Container("model", ref, command)])
    _, out = run_pod(mirrored, pod, tmp_path)
    check_listing(out, "/model", {**lazy_model.rows[1], **lazy_model.rows[2]})
    blobs = lazy_model.allotments
    served = blobs_served(mirrored, since)
    assert blobs[0] not in served and blobs[3] not in served
    assert set(served[blobs[1]]) == set(served[blobs[2]]) == {206}


def test_ctr_pulls_a_partition_through_the_mirror(mirrored: Stack, model: Pushed2dfs) -> None:
    """``ctr image pull --hosts-dir``: on 2.1 through the transfer service, lazily when the
    allotments allow it; on 1.6 ctr downloads every layer (by its design). Of the partition
    only, either way."""
    ref = f"{model.ref}--3.0.3.0"
    since = len(mirrored.registry.requests())
    hosts = f"--hosts-dir={mirrored.containerd.hosts_dir}"
    mirrored.ctr("images", "pull", hosts, "--snapshotter", "lazy2dfs", ref)

    sees_exactly(mirrored, ref, "ctr-partition", model.rows[3], namespace="default")
    blobs = model.allotments
    served = blobs_served(mirrored, since)
    assert not {blobs[0], blobs[1], blobs[2]} & set(served)
    content = mirrored.ctr("content", "ls", "--quiet").split()
    if model.lazy and mirrored.containerd.release is CONTAINERD_2_1:
        assert set(served[blobs[3]]) == {206}
        assert not set(layer_digests(ref)) & set(content)
    else:
        assert 200 in served[blobs[3]] and blobs[3] in content


def test_an_image_volume_of_a_partition(mirrored: Stack, model: Pushed2dfs, tmp_path: Path) -> None:
    """Kubernetes image volumes (containerd 2.1): a model server's pod mounts the partition
    at /models, served by lazy2dfs (lazily when the allotments allow it), fetching nothing of
    the other rows."""
    if mirrored.containerd.release is not CONTAINERD_2_1:
        pytest.skip("containerd 1.6 has no image volumes")
    ref = f"{model.ref}--2.0.3.0"
    app = mirrored.push("apps/server:v1", build_image([runtime_tree()]))
    since = len(mirrored.registry.requests())
    command = ["/bin/sh", "-c", LIST_AND_SUM.format(dir="/models/model")]
    server = Container("server", app, command, [VolumeMount("weights", "/models")])
    pod = Pod(name="stages-2-3", containers=[server], volumes=[ImageVolume("weights", ref)])
    running, out = run_pod(mirrored, pod, tmp_path)
    check_listing(out, "/models/model", {**model.rows[2], **model.rows[3]})
    assert running.image_refs["weights"] == partitioned_image(ref).config_digest
    blobs = model.allotments
    served = blobs_served(mirrored, since)
    assert blobs[0] not in served and blobs[1] not in served
    if model.lazy:
        assert set(served[blobs[2]]) == set(served[blobs[3]]) == {206}
        mounted = mirrored.daemon_events("layer mounted lazily")
        assert any(f"layer={blobs[2]}" in line and f"image={ref}" in line for line in mounted)
    else:
        assert 200 in served[blobs[2]] and 200 in served[blobs[3]]
