"""`lazy2dfs convert` against a real registry on loopback: plain gzip images in, eStargz or
zstd:chunked out, read back with our reader; a second run uploads nothing."""

import functools
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import zstandard

from devstack.images import build_image
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from lazy2dfs.convert import ConvertOptions, convert
from lazy2dfs.estargz import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    Compression,
    EntryType,
    open_blob,
)
from lazy2dfs.estargz.zstdchunked import (
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
)
from lazy2dfs.progress import Progress
from lazy2dfs.registry_client import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ImageManifest,
    SyncRegistryClient,
    parse_manifest,
    sha256_digest,
)
from tests.support.terminal import BAR, on_terminal

WEIGHTS = hashlib.sha256(b"seed").digest() * 40000  # 1.25 MiB, several chunks
TREES = [
    {"etc/os-release": b"ID=test\n", "bin/tool": b"#!/bin/sh\n"},
    {"model/weights.bin": WEIGHTS, "model/config.json": b'{"layers": 2}'},
]
CHUNK = 256 << 10


def uploads(registry: LocalRegistry) -> int:
    return sum(1 for r in registry.requests() if r.method in ("POST", "PUT", "PATCH"))


def files_of(tar_bytes: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as archive:
        for member in archive:
            extracted = archive.extractfile(member) if member.isreg() else None
            if extracted is not None:
                out[member.name] = extracted.read()
    return out


def read_range(blob: bytes, offset: int, length: int) -> bytes:
    return blob[offset : offset + length]


def check_converted(client: SyncRegistryClient, ref: str, media_type: str) -> dict[str, bytes]:
    """Every layer of ``ref`` opens with the TOC digest its annotation names, its files decode
    to the source bytes, and the config lists the layers' real diff IDs. Returns the files."""
    image = client.get_image(ref)
    config = json.loads(client.get_blob(ref, image.manifest.config.digest))
    files: dict[str, bytes] = {}
    for layer, diff_id in zip(image.manifest.layers, config["rootfs"]["diff_ids"], strict=True):
        assert layer.media_type == media_type
        annotations = layer.annotations or {}
        blob = client.get_blob(ref, layer.digest)
        toc = open_blob(
            functools.partial(read_range, blob),
            len(blob),
            expected_toc_digest=annotations[TOC_DIGEST_ANNOTATION],
        )
        regular = {entry.name for entry in toc.entries if entry.type is EntryType.REG}
        if media_type == OCI_LAYER_ZSTD:
            plain = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
            position = annotations[MANIFEST_POSITION_ANNOTATION].split(":")
            offset, length = int(position[0]), int(position[1])
            assert position[3] == "1"
            assert annotations[MANIFEST_CHECKSUM_ANNOTATION] == sha256_digest(
                blob[offset : offset + length]
            )
        else:
            plain = gzip.decompress(blob)
        assert diff_id == sha256_digest(plain)
        assert annotations[UNCOMPRESSED_SIZE_ANNOTATION] == str(len(plain))
        layer_files = files_of(plain)
        assert regular and regular <= set(layer_files)
        files.update(layer_files)
    return files


def test_index_of_plain_gzip_layers_becomes_estargz_and_a_second_run_uploads_nothing(
    registry: LocalRegistry,
) -> None:
    image = build_image(TREES, in_index=True, annotations={"org.example/keep": "1"})
    src = registry.push("conv/plain:v1", image)
    dst = f"{registry.host}/conv/plain:estargz"
    stderr = io.StringIO()
    options = ConvertOptions(compression=Compression.GZIP, chunk_size=CHUNK, workers=2)
    first = convert(src, dst, options, plain_http=True, progress=Progress(stderr))
    assert len(first.layers) == 2 and all(layer.pushed for layer in first.layers.values())
    assert first.root_media_type == OCI_INDEX
    assert "layer 2" in stderr.getvalue() and "\r" not in stderr.getvalue()

    client = SyncRegistryClient(plain_http=True)
    root = client.get_manifest(dst)
    assert root.descriptor.digest == first.root_digest
    index = json.loads(root.data)
    assert index["mediaType"] == OCI_INDEX
    assert index["annotations"] == {"org.example/keep": "1"}
    assert index["manifests"][0]["platform"]["os"] == image.platform.os
    files = check_converted(client, dst, OCI_LAYER_GZIP)
    assert files["model/weights.bin"] == WEIGHTS
    assert files["etc/os-release"] == b"ID=test\n"
    for source, layer in first.layers.items():
        assert source in {built.blob.digest for built in image.layers}
        assert layer.source_diff_id in {built.diff_id for built in image.layers}
        assert layer.diff_id != layer.source_diff_id  # landmark and TOC entries are new

    before = uploads(registry)
    second = convert(src, dst, options, plain_http=True, progress=Progress(io.StringIO()))
    assert second.root_digest == first.root_digest
    assert second.blobs_pushed == 0 and second.manifests_pushed == 0
    assert not any(layer.pushed for layer in second.layers.values())
    assert uploads(registry) == before


def docker_image(registry: LocalRegistry) -> str:
    """A Docker schema 2 image (as `docker push` makes), pushed by hand."""
    built = build_image(TREES[1:])
    config = json.loads(built.config.data)
    config_data = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "digest": sha256_digest(config_data),
            "size": len(config_data),
        },
        "layers": [
            {
                "mediaType": DOCKER_LAYER_GZIP,
                "digest": layer.blob.digest,
                "size": len(layer.blob.data),
            }
            for layer in built.layers
        ],
    }
    ref = f"{registry.host}/conv/docker:v1"
    client = SyncRegistryClient(plain_http=True)
    client.push_blob(ref, sha256_digest(config_data), config_data)
    for layer in built.layers:
        client.push_blob(ref, layer.blob.digest, layer.blob.data)
    client.push_manifest(ref, json.dumps(manifest).encode(), DOCKER_MANIFEST)
    return ref


def test_docker_schema2_becomes_oci_zstd_chunked_through_the_cli(registry: LocalRegistry) -> None:
    src = docker_image(registry)
    dst = f"{registry.host}/conv/docker:zstd"
    done = subprocess.run(
        [
            *lazy2dfs_argv(),
            "convert",
            "--plain-http",
            "--compression",
            "zstd",
            "--chunk-size",
            str(CHUNK),
            src,
            dst,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "1 layers as zstd:chunked" in done.stdout
    assert "layer 1" in done.stderr
    client = SyncRegistryClient(plain_http=True)
    root = client.get_manifest(dst)
    manifest = parse_manifest(root.data, root.descriptor.media_type)
    assert isinstance(manifest, ImageManifest)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.config.media_type == "application/vnd.oci.image.config.v1+json"
    files = check_converted(client, dst, OCI_LAYER_ZSTD)
    assert files["model/weights.bin"] == WEIGHTS


def test_cli_reports_a_missing_source_as_an_error(registry: LocalRegistry, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *lazy2dfs_argv(),
            "convert",
            "--plain-http",
            f"{registry.host}/conv/absent:v1",
            f"{registry.host}/conv/absent:out",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("lazy2dfs: ") and "not found" in done.stderr


def test_destination_without_tag_is_refused(registry: LocalRegistry) -> None:
    done = subprocess.run(
        [
            *lazy2dfs_argv(),
            "convert",
            "--plain-http",
            "a/b:c",
            f"{registry.host}/x@{'sha256:' + '0' * 64}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "needs a tag" in done.stderr


def test_progress_on_a_terminal_is_bars_with_rate_and_eta_elsewhere_plain_lines(
    registry: LocalRegistry,
) -> None:
    """The same convert, its stderr a terminal, then a pipe (a CI log)."""
    big = os.urandom(24 << 20)
    image = build_image([{"model/big.bin": big}])
    src = registry.push("conv/progress:v1", image)
    argv = [*lazy2dfs_argv(), "convert", "--plain-http", src, f"{registry.host}/conv/progress:e"]

    code, terminal = on_terminal(argv)
    assert code == 0
    bars = list(BAR.finditer(terminal))
    assert bars, repr(terminal[-3000:])
    # Each bar shows its rate and time left ("?" until a second drawing: a stage on loopback
    # may end before one).
    assert all(re.fullmatch(r"(\?|[\d.]+[kMG]?)B/s", bar["rate"]) for bar in bars), bars
    assert all(re.fullmatch(r"\?|\d\d:\d\d", bar["left"]) for bar in bars), bars
    assert {"download", "decompress", "convert", "push"} <= {
        word for bar in bars for word in bar["label"].split()
    }
    assert "layer 1" in terminal

    logged = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0
    assert "layer 1" in logged.stderr
    assert "\r" not in logged.stderr and "%|" not in logged.stderr and "\x1b" not in logged.stderr
