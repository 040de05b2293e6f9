"""lazy2dfs build against a real registry: push, fetch back, partition, rebuild, export."""

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from devstack.images import Blob, BuiltImage, build_image, build_layer, push_image
from devstack.registry import LocalRegistry
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazy2dfs.progress import Progress
from lazy2dfs.registry_client import (
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    CredentialStore,
    ImageIndex,
    ImageManifest,
    RegistryClient,
    parse_manifest,
)
from lazy2dfs.tdfs import (
    FIELD_MEDIA_TYPE,
    IMAGE_NAME_ANNOTATION,
    Allotment,
    BuildRequest,
    BuildResult,
    EncodeOptions,
    Field,
    PartitionedImage,
    build,
    fetch_partitioned_image,
    parse_field,
)
from tests.support.registry import run

ROWS = 4
BASE = build_image([{"bin/app": b"#!/bin/sh\n"}, {"etc/conf": b"x=1\n"}], in_index=True)


@pytest.fixture(scope="module")
def base_ref(registry: LocalRegistry) -> str:
    reference = f"{registry.host}/base/runtime:v1"
    run(lambda c: push_image(c, reference, BASE))
    return reference


def _project(root: Path) -> Path:
    """Four rows of weights (one file per row, the last row two files) and its 2dfs.json."""
    root.mkdir()
    allotments = []
    for row in range(ROWS):
        (root / f"block{row}.bin").write_bytes(os.urandom(150_000 + row))
        src: str | list[str] = f"block{row}.bin"
        dst: str | list[str] = f"/model/block{row}.bin"
        if row == ROWS - 1:
            (root / "head.bin").write_bytes(b"head" * 100)
            src, dst = [f"block{row}.bin", "head.bin"], [f"/model/block{row}.bin", "/model/head"]
        allotments.append({"src": src, "dst": dst, "row": row, "col": 0})
    (root / "2dfs.json").write_text(json.dumps({"allotments": allotments}))
    return root / "2dfs.json"


def _build(spec: Path, base: str, target: str, cache: Path, **options: object) -> BuildResult:
    request = BuildRequest(
        spec=spec,
        base=base,
        target=target,
        cache_root=cache,
        encode=EncodeOptions(chunk_size=64 * 1024, workers=2),
        **options,  # type: ignore[arg-type]
    )
    return build(request, progress=Progress(quiet=True), credentials=CredentialStore())


def _uploads(registry: LocalRegistry, since: int, repository: str) -> list[str]:
    """Digests whose bytes were PUT to ``repository`` after request number ``since``."""
    return sorted(
        request.path.split("digest=")[1].replace("%3A", ":")
        for request in registry.requests()[since:]
        if request.method == "PUT"
        and request.path.startswith(f"/v2/{repository}/blobs/uploads/")
        and "digest=" in request.path
    )


def _layer_bytes(registry: LocalRegistry, digest: str) -> bytes:
    return registry.blob_path(digest).read_bytes()


def test_build_push_partition_rebuild(
    registry: LocalRegistry, base_ref: str, workdir: Path
) -> None:
    spec = _project(workdir / "project")
    target = f"{registry.host}/models/llm:v1"
    cache = workdir / "cache"
    before = len(registry.requests())
    result = _build(spec, base_ref, target, cache, push=True)

    # The base layers were mounted from the base repository, never downloaded.
    base_digests = {b.digest for b in BASE.blobs}
    logged = registry.requests()[before:]
    assert not [
        r for r in logged if r.method == "GET" and r.path.startswith("/v2/base/runtime/blobs/")
    ]
    assert any(r.method == "POST" and "mount=" in r.path for r in logged)
    assert base_digests <= set(result.uploaded)
    assert not base_digests & set(_uploads(registry, before, "models/llm"))
    assert all(not a.cached for a in result.allotments)

    # Fetch back: an OCI index named by 2dfs.image.name, base layers then the field.
    root = run(lambda c: c.get_manifest(target))
    assert root.descriptor.digest == result.image.index_digest
    assert isinstance(root.manifest, ImageIndex)
    assert root.manifest.annotations == {IMAGE_NAME_ANNOTATION: target}
    image = run(lambda c: c.get_image(target, BASE.platform))
    assert image.manifest.config.digest == BASE.config.digest
    layers = image.manifest.layers
    assert [layer.digest for layer in layers[:-1]] == [layer.blob.digest for layer in BASE.layers]
    assert layers[-1].media_type == FIELD_MEDIA_TYPE
    field = parse_field(run(lambda c: c.get_blob(target, layers[-1].digest)))
    assert field.to_json() == result.field
    assert [(a.row, a.col) for a in field.allotments()] == [(r, 0) for r in range(ROWS)]

    # Partition rows 1..2 on the client, as a lazy2dfs pull would.
    partitioned = run(lambda c: fetch_partitioned_image(c, target + "--1.0.2.0"))
    _check_partition(registry, partitioned, field.rows[1][0].digest, field.rows[2][0].digest)

    # Rebuild after changing row 2 only: one new allotment blob, the rest from the cache.
    (spec.parent / "block2.bin").write_bytes(os.urandom(150_002))
    before = len(registry.requests())
    again = _build(spec, base_ref, target, cache, push=True)
    assert [a.cached for a in again.allotments] == [True, True, False, True]
    old = [a.blob.digest for a in result.allotments]
    new = [a.blob.digest for a in again.allotments]
    assert new[:2] == old[:2] and new[3] == old[3] and new[2] != old[2]
    field_digest = "sha256:" + hashlib.sha256(again.field).hexdigest()
    assert _uploads(registry, before, "models/llm") == sorted([new[2], field_digest])
    assert sorted(again.uploaded) == sorted([new[2], field_digest])
    partitioned = run(lambda c: fetch_partitioned_image(c, target + "--2.0.2.0"))
    manifest = json.loads(partitioned.manifest)
    assert manifest["layers"][-1]["digest"] == new[2]


def _check_partition(registry: LocalRegistry, image: PartitionedImage, *allotments: str) -> None:
    manifest = parse_manifest(image.manifest, "")
    assert isinstance(manifest, ImageManifest)
    config = json.loads(image.config)
    assert manifest.config.digest == image.config_digest
    assert (config["os"], config["architecture"]) == (BASE.platform.os, BASE.platform.architecture)
    assert [layer.digest for layer in manifest.layers] == [
        *(layer.blob.digest for layer in BASE.layers),
        *("sha256:" + digest for digest in allotments),
    ]
    assert FIELD_MEDIA_TYPE not in {layer.media_type for layer in manifest.layers}
    diff_ids = config["rootfs"]["diff_ids"]
    assert diff_ids[: len(BASE.layers)] == [layer.diff_id for layer in BASE.layers]
    for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
        blob = _layer_bytes(registry, layer.digest)
        assert layer.size == len(blob)
        if layer.media_type == OCI_LAYER_ZSTD:
            tar = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
        else:
            tar = gzip.decompress(blob)
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
    for layer in manifest.layers[len(BASE.layers) :]:
        assert layer.media_type == OCI_LAYER_ZSTD  # lazy2dfs build's default
        annotations = layer.annotations or {}
        assert annotations[TOC_DIGEST_ANNOTATION].startswith("sha256:")
        assert int(annotations[UNCOMPRESSED_SIZE_ANNOTATION]) > 150_000


def test_as_tar_writes_a_complete_oci_layout(base_ref: str, workdir: Path) -> None:
    spec = _project(workdir / "project")
    out = workdir / "image.tar"
    result = _build(spec, base_ref, "example.com/models/llm:v2", workdir / "cache", as_tar=out)
    assert result.uploaded == ()
    with tarfile.open(out) as archive:
        files = {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }

    def blob(digest: str) -> bytes:
        data = files["blobs/" + digest.replace(":", "/")]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (top,) = json.loads(files["index.json"])["manifests"]
    assert top["mediaType"] == OCI_INDEX
    assert top["annotations"]["io.containerd.image.name"] == "example.com/models/llm:v2"
    index = json.loads(blob(top["digest"]))
    assert index["annotations"][IMAGE_NAME_ANNOTATION] == "example.com/models/llm:v2"
    (entry,) = index["manifests"]
    manifest = json.loads(blob(entry["digest"]))
    blob(manifest["config"]["digest"])
    for layer in manifest["layers"]:
        blob(layer["digest"])
    field = parse_field(blob(manifest["layers"][-1]["digest"]))
    for allotment in field.allotments():
        assert allotment.compression == "zstd"
        plain = zstandard.ZstdDecompressor().stream_reader(
            blob(allotment.blob_digest), read_across_frames=True
        )
        with tarfile.open(fileobj=io.BytesIO(plain.read())) as layer_tar:
            assert any(name.startswith("model/block") for name in layer_tar.getnames())
    assert len([name for name in files if name.startswith("blobs/")]) == (
        1 + 1 + 1 + len(BASE.layers) + 1 + ROWS  # index, manifest, config, layers, field
    )


def test_stock_builder_layout_partitions_with_head_requests(
    registry: LocalRegistry, workdir: Path
) -> None:
    """A field as the Go builder writes it: plain tar.gz allotments, no sizes, no TOC digests."""
    allotments = [build_layer({f"weights/{row}.bin": bytes([row]) * 1000}) for row in range(3)]
    field = Field.from_allotments(
        Allotment(row, 0, layer.blob.digest[7:], layer.diff_id[7:])
        for row, layer in enumerate(allotments)
    )
    stock: BuiltImage = build_image(
        list(BASE.layers), extra=[Blob(FIELD_MEDIA_TYPE, field.to_json())], in_index=True
    )
    reference = f"{registry.host}/stock/model:v1"

    async def push(client: RegistryClient) -> None:
        for layer in allotments:
            await client.push_blob(reference, layer.blob.digest, layer.blob.data)
        await push_image(client, reference, stock)

    run(push)
    partitioned = run(lambda c: fetch_partitioned_image(c, reference + "--1.0.2.0"))
    manifest = json.loads(partitioned.manifest)
    added = manifest["layers"][len(BASE.layers) :]
    assert added == [
        {"mediaType": OCI_LAYER_GZIP, "digest": layer.blob.digest, "size": len(layer.blob.data)}
        for layer in allotments[1:]
    ]
    assert json.loads(partitioned.config)["rootfs"]["diff_ids"] == [
        *(layer.diff_id for layer in BASE.layers),
        *(layer.diff_id for layer in allotments[1:]),
    ]


def test_base_on_another_registry_is_copied_through_the_cache(
    registry: LocalRegistry, workdir: Path
) -> None:
    """A bare-manifest base (no index) on a second registry: blobs are downloaded once."""
    bare = build_image([{"bin/app": b"other"}], in_index=False)
    with LocalRegistry(workdir / "other") as other:
        base = f"{other.host}/library/bare:v1"
        run(lambda c: push_image(c, base, bare))
        spec = _project(workdir / "project")
        target = f"{registry.host}/copied/llm:v1"
        result = _build(spec, base, target, workdir / "cache", push=True)
        again = _build(spec, base, target + "-again", workdir / "cache", push=True)
        base_gets = [r for r in other.requests() if r.method == "GET" and "/blobs/" in r.path]

    fetched = [r.path.rsplit("/", 1)[1] for r in base_gets]
    # Each layer is downloaded once over both builds; the config is also read to learn the
    # platform of a base without index.
    assert sorted(d for d in fetched if d != bare.config.digest) == [
        layer.blob.digest for layer in bare.layers
    ]
    assert {b.digest for b in bare.blobs} <= set(result.uploaded)
    assert not {b.digest for b in bare.blobs} & set(again.uploaded)
    index = json.loads(result.image.index)
    (entry,) = index["manifests"]
    assert entry["platform"]["architecture"] == bare.platform.architecture
    image = run(lambda c: c.get_image(target, bare.platform))
    assert [layer.digest for layer in image.manifest.layers[:-1]] == [
        layer.blob.digest for layer in bare.layers
    ]
