"""The partition mirror against a real registry, asked as containerd asks (``?ns=<registry>``):
partition tags get the partitioned manifest, by tag and by digest, everything else comes from
the registry unchanged, and neither a hostile registry nor a hostile client holds it up."""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import trio

from devstack.containerd import write_mirror_hosts
from devstack.faults import FaultProxy
from devstack.images import build_2dfs_image, build_image, stock_2dfs_image
from devstack.registry import LocalRegistry, free_port
from lazy2dfs.config import Config, RegistryConfig
from lazy2dfs.digest import chain_ids
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION
from lazy2dfs.layers.locator import Located, RegistryLocator
from lazy2dfs.registry_client import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    CredentialStore,
    ImageManifest,
    RegistryClient,
    parse_manifest,
)
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError
from lazy2dfs.tdfs import (
    PartitionedImage,
    fetch_partitioned_image,
    field_descriptor,
)
from lazy2dfs.tdfs.computed import ComputedImages
from lazy2dfs.tdfs.mirror import MirrorLimits, PartitionMirror
from tests.support.registry import run

ROWS = [{f"model/row{row}.bin": bytes([row]) * (100_000 + row)} for row in range(4)]
BASE = {"bin/app": b"#!/bin/sh\n"}
PLAIN = build_image([{"data/blob.bin": bytes(range(256)) * 800}])
LIMITS = MirrorLimits(head_seconds=1.0, idle_seconds=1.0, answer_seconds=3.0, stall_seconds=2.0)


@dataclass(frozen=True)
class Pushed:
    lazy: str  # lazy2dfs build: zstd:chunked allotments, sizes and TOC digests in the field
    stock: str  # the stock builder's layout: tar.gz allotments, a bare field
    plain: str  # an ordinary image
    stock_rows: tuple[str, ...]  # allotment blob digests of ``stock``, by row


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    work = tmp_path_factory.mktemp("mirror-build")
    base = registry.push("mirror/base:v1", build_image([BASE]))
    lazy = f"{registry.host}/mirror/lazy:v1"
    build_2dfs_image(work, base, lazy, ROWS, 64 * 1024)
    stock = stock_2dfs_image([BASE], ROWS)
    return Pushed(
        lazy,
        registry.push("mirror/stock:v1", stock),
        registry.push("mirror/plain:v1", PLAIN),
        tuple(a.blob.digest for a in stock.allotments),
    )


def start_mirror(hosts_dir: Path, registries: Sequence[str] = (), port: int = 0) -> PartitionMirror:
    """A mirror whose daemon configuration reads ``hosts_dir``, where each of ``registries``
    gets the shipped hosts.toml naming the mirror (so the mirror also sees itself there)."""
    address = f"127.0.0.1:{port or free_port()}"
    for registry in registries:
        write_mirror_hosts(hosts_dir, registry, address)
    config = Config(mirror_address=address, registry=RegistryConfig(hosts_dir=hosts_dir))
    return PartitionMirror(config, ComputedImages(), LIMITS).start()


@pytest.fixture
def mirror(registry: LocalRegistry, tmp_path: Path) -> Iterator[PartitionMirror]:
    running = start_mirror(tmp_path / "certs.d", [registry.host])
    try:
        yield running
    finally:
        running.stop()


def ask(
    mirror: PartitionMirror,
    ref: str,
    kind: str = "manifests",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """What containerd sends the mirror for ``ref`` (``host/repository:tag`` or
    ``host/repository@digest``): ``/v2/<repository>/<kind>/<tag or digest>?ns=<host>``."""
    registry, _, rest = ref.partition("/")
    repository, _, name = rest.rpartition("@") if "@" in rest else rest.rpartition(":")
    url = f"http://127.0.0.1:{mirror.port}/v2/{repository}/{kind}/{name}"
    return httpx.request(method, url, params={"ns": registry}, headers=headers, timeout=60)


def partitioned(ref: str) -> PartitionedImage:
    """The image ``lazy2dfs pull`` computes for a partition reference."""
    return run(lambda c: fetch_partitioned_image(c, ref))


def blobs_asked(registry: LocalRegistry, since: int) -> set[str]:
    return {
        r.path.rsplit("/", 1)[-1] for r in registry.requests()[since:] if "/blobs/sha256:" in r.path
    }


def repository(ref: str) -> str:
    return ref.split("/", 1)[1].rsplit(":", 1)[0]


def test_a_partition_tag_resolves_to_the_partitioned_manifest(
    registry: LocalRegistry, pushed: Pushed, mirror: PartitionMirror
) -> None:
    ref = f"{pushed.lazy}--1.0.2.0"
    expected = partitioned(ref)
    since = len(registry.requests())

    head = ask(mirror, ref, method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["docker-content-digest"] == expected.manifest_digest
    assert head.headers["content-length"] == str(len(expected.manifest))
    assert head.headers["content-type"] == OCI_MANIFEST

    # The mirror read the index, the platform manifest, the field and the config: no allotment.
    image = run(lambda c: c.get_image(pushed.lazy))
    field = field_descriptor(image.manifest).digest
    assert blobs_asked(registry, since) == {field, image.manifest.config.digest}

    got = ask(mirror, ref)
    assert got.status_code == 200 and got.content == expected.manifest
    manifest = parse_manifest(got.content, OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest) and len(manifest.layers) == 3
    for layer in manifest.layers[1:]:  # rows 1 and 2, each mountable lazily
        assert (layer.annotations or {}).get(TOC_DIGEST_ANNOTATION, "").startswith("sha256:")

    # containerd fetches both by digest next; the registry has neither.
    name = repository(pushed.lazy)
    by_digest = ask(mirror, f"{registry.host}/{name}@{expected.manifest_digest}")
    assert by_digest.content == expected.manifest
    config = ask(mirror, f"{registry.host}/{name}@{expected.config_digest}", "blobs")
    assert config.status_code == 200 and config.content == expected.config
    assert config.headers["docker-content-digest"] == expected.config_digest


def test_a_union_of_partitions_is_one_image(
    registry: LocalRegistry, pushed: Pushed, mirror: PartitionMirror
) -> None:
    ref = f"{pushed.lazy}--3.0.3.0--0.0.0.0--0.0.0.0"
    got = ask(mirror, ref)
    assert got.status_code == 200 and got.content == partitioned(ref).manifest
    manifest = parse_manifest(got.content, OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    assert len(manifest.layers) == 3  # the base, then rows 0 and 3, each once


def test_a_stock_layout_partition_names_only_its_allotments(
    registry: LocalRegistry, pushed: Pushed, mirror: PartitionMirror
) -> None:
    ref = f"{pushed.stock}--1.0.2.0"
    since = len(registry.requests())
    got = ask(mirror, ref)
    assert got.status_code == 200 and got.content == partitioned(ref).manifest
    manifest = parse_manifest(got.content, OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    rows = manifest.layers[1:]
    assert [layer.digest for layer in rows] == list(pushed.stock_rows[1:3])
    assert all(layer.media_type == OCI_LAYER_GZIP and not layer.annotations for layer in rows)
    # Sizes came from HEAD requests for the two selected allotments, nothing of the others.
    asked = blobs_asked(registry, since)
    assert set(pushed.stock_rows[1:3]) <= asked
    assert not asked & {pushed.stock_rows[0], pushed.stock_rows[3]}

    # containerd downloads a stock allotment through the mirror: the registry's bytes.
    layer = rows[0]
    name = repository(pushed.stock)
    body = ask(mirror, f"{registry.host}/{name}@{layer.digest}", "blobs")
    assert body.status_code == 200
    assert body.content == registry.blob_path(layer.digest).read_bytes()
    assert len(body.content) == layer.size


def test_everything_else_is_relayed_from_the_registry(
    registry: LocalRegistry, pushed: Pushed, mirror: PartitionMirror
) -> None:
    got = ask(mirror, pushed.plain)
    assert got.status_code == 200 and got.content == PLAIN.manifest.data
    assert got.headers["docker-content-digest"] == PLAIN.manifest.digest
    assert got.headers["content-type"] == OCI_MANIFEST
    name = repository(pushed.plain)
    layer = PLAIN.layers[0].blob
    at = f"{registry.host}/{name}@{layer.digest}"
    assert ask(mirror, f"{registry.host}/{name}@{PLAIN.manifest.digest}").content == (
        PLAIN.manifest.data
    )
    assert ask(mirror, at, "blobs").content == layer.data
    head = ask(mirror, at, "blobs", "HEAD")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(layer.data))
    ranged = ask(mirror, at, "blobs", headers={"Range": "bytes=100-1099"})
    assert ranged.status_code == 206 and ranged.content == layer.data[100:1100]
    assert ranged.headers["content-range"] == f"bytes 100-1099/{len(layer.data)}"

    missing = ask(mirror, f"{registry.host}/{name}:v9")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    unknown_blob = f"{registry.host}/{name}@sha256:{'0' * 64}"
    assert ask(mirror, unknown_blob, "blobs").status_code == 404


def test_refusals_say_why(registry: LocalRegistry, pushed: Pushed, mirror: PartitionMirror) -> None:
    base = f"http://127.0.0.1:{mirror.port}"
    assert httpx.get(f"{base}/v2/").status_code == 200
    name = repository(pushed.lazy)
    no_ns = httpx.get(f"{base}/v2/{name}/manifests/v1--1.0.2.0")
    assert no_ns.status_code == 400 and "ns=" in no_ns.text
    write = httpx.put(f"{base}/v2/{name}/manifests/v2", params={"ns": registry.host}, content=b"")
    assert write.status_code == 405 and "read-only" in write.text
    outside = ask(mirror, f"{pushed.lazy}--9.0.9.0")
    assert outside.status_code == 400 and "outside the field" in outside.text
    not_2dfs = ask(mirror, f"{pushed.plain}--0.0.0.0")
    assert not_2dfs.status_code == 400 and "2dfs.field" in not_2dfs.text
    assert httpx.get(f"{base}/v2/_catalog").status_code == 404
    by_tag = ask(mirror, f"{pushed.plain}", "blobs")
    assert by_tag.status_code == 400 and "by digest" in by_tag.text


def test_a_registry_that_never_answers_costs_a_bounded_wait(
    registry: LocalRegistry, pushed: Pushed, tmp_path: Path
) -> None:
    """One client waits for a registry that accepts and never answers: it gets 504 once the
    deadline is over, and a client of a healthy registry is served meanwhile."""
    with FaultProxy(registry.host) as hostile:
        hostile.faults.blackhole = True
        mirror = start_mirror(tmp_path / "certs.d", [registry.host, hostile.host])
        stuck = f"{hostile.host}/{repository(pushed.lazy)}:v1--1.0.2.0"
        try:
            with ThreadPoolExecutor(1) as pool:
                start = time.monotonic()
                waiting = pool.submit(ask, mirror, stuck)
                time.sleep(0.5)
                healthy = ask(mirror, pushed.plain)
                assert healthy.status_code == 200
                assert time.monotonic() - start < LIMITS.answer_seconds
                answer = waiting.result(timeout=30)
                assert answer.status_code == 504
                assert time.monotonic() - start < LIMITS.answer_seconds + 5
        finally:
            mirror.stop()


def test_a_client_that_stops_sending_is_cut_off(pushed: Pushed, mirror: PartitionMirror) -> None:
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as slow:
        slow.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        start = time.monotonic()
        assert ask(mirror, pushed.plain).status_code == 200  # others are served meanwhile
        assert slow.recv(1024) == b""  # closed by the mirror
        assert time.monotonic() - start < LIMITS.head_seconds + 5


def test_many_clients_at_once_get_the_same_bytes(
    registry: LocalRegistry, pushed: Pushed, mirror: PartitionMirror
) -> None:
    ref = f"{pushed.stock}--0.0.3.0"
    layer = pushed.stock_rows[2]
    at = f"{registry.host}/{repository(pushed.stock)}@{layer}"
    with ThreadPoolExecutor(16) as pool:
        manifests = list(pool.map(lambda _: ask(mirror, ref).content, range(16)))
        bodies = list(pool.map(lambda _: ask(mirror, at, "blobs").content, range(16)))
    assert set(manifests) == {partitioned(ref).manifest}
    assert set(bodies) == {registry.blob_path(layer).read_bytes()}


def test_only_registries_whose_hosts_toml_names_the_mirror_are_served(
    registry: LocalRegistry, pushed: Pushed, tmp_path: Path
) -> None:
    """The daemon's credentials are used for its clients only where the operator routed a
    registry through the mirror; and the mirror, which reads that same hosts.toml for its
    own requests, goes to the registry, never to itself (the fixture's mirror shows that)."""
    elsewhere = start_mirror(tmp_path / "certs.d")
    try:
        refused = ask(elsewhere, f"{pushed.lazy}--1.0.2.0")
        assert refused.status_code == 403 and "does not name this mirror" in refused.text
    finally:
        elsewhere.stop()


def test_stop_ends_connections_and_a_restart_serves_on_the_same_port(tmp_path: Path) -> None:
    running = start_mirror(tmp_path / "certs.d")
    idle = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    threads = threading.active_count()
    running.stop()
    with contextlib.suppress(ConnectionResetError):  # reset if stop came before the accept
        assert idle.recv(16) == b""
    idle.close()
    assert threading.active_count() < threads
    again = start_mirror(tmp_path / "certs.d", port=running.port)
    try:
        assert httpx.get(f"http://127.0.0.1:{again.port}/v2/").status_code == 200
    finally:
        again.stop()


def test_the_snapshotter_locates_a_partition_with_or_without_the_mirrors_copy(
    pushed: Pushed, mirror: PartitionMirror
) -> None:
    """CRI's labels name the partition tag and the computed manifest's digest, which the
    registry does not have: the locator reads the mirror's copy, or computes it again (after
    a daemon restart), and refuses a digest the tag no longer names."""
    ref = f"{pushed.lazy}--1.0.2.0"
    expected = parse_manifest(ask(mirror, ref).content, OCI_MANIFEST)
    assert isinstance(expected, ImageManifest)
    digest = partitioned(ref).manifest_digest
    layer = expected.layers[2]  # row 2's allotment
    diff_ids = json.loads(partitioned(ref).config)["rootfs"]["diff_ids"]
    request = LayerRequest(
        chain_id=chain_ids(diff_ids)[2],
        reference=ref,
        layer_digest=layer.digest,
        manifest_digest=digest,
    )
    toc = (layer.annotations or {})[TOC_DIGEST_ANNOTATION]

    async def locate(computed: ComputedImages, wanted: LayerRequest) -> Located:
        async with RegistryClient(credentials=CredentialStore()) as client:
            return await RegistryLocator(client, computed).locate(wanted)

    kept = trio.run(locate, mirror.images, request)
    assert (kept.toc_digest, kept.size, kept.diff_id) == (toc, layer.size, diff_ids[2])
    assert trio.run(locate, ComputedImages(), request) == kept
    moved = replace(request, manifest_digest="sha256:" + "1" * 64)
    with pytest.raises(NotLazyError) as refused:
        trio.run(locate, ComputedImages(), moved)
    assert refused.value.reason == "no-manifest"
