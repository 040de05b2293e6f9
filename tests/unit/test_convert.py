"""convert's pure rewriting: manifests (OCI and Docker schema 2), configs, indexes, progress."""

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazy2dfs.convert import (
    ConfigMismatchError,
    ConvertedLayer,
    ConvertOptions,
    UnsupportedImageError,
)
from lazy2dfs.convert.documents import rewrite_config, rewrite_index, rewrite_manifest
from lazy2dfs.convert.layer import convert_layer_file, decompress_layer
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, Compression
from lazy2dfs.estargz.zstdchunked import MANIFEST_CHECKSUM_ANNOTATION
from lazy2dfs.progress import Progress
from lazy2dfs.registry_client import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)

D = {n: "sha256:" + (f"{n:x}" * 64)[:64] for n in range(1, 16)}
FIELD_TYPE = "application/vnd.oci.image.layer.v1.2dfs.field"


def converted(source: str, digest: str, diff_id: str = D[9]) -> ConvertedLayer:
    return ConvertedLayer(
        source_digest=source,
        source_diff_id=D[8],
        digest=digest,
        size=1234,
        diff_id=diff_id,
        toc_digest=D[10],
        annotations={TOC_DIGEST_ANNOTATION: D[10], UNCOMPRESSED_SIZE_ANNOTATION: "4096"},
        pushed=True,
    )


def docker_manifest() -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": D[1], "size": 10},
            "layers": [
                {"mediaType": DOCKER_LAYER_GZIP, "digest": D[2], "size": 20},
                {
                    "mediaType": DOCKER_FOREIGN_LAYER,
                    "digest": D[3],
                    "size": 30,
                    "urls": ["https://example.invalid/layer"],
                },
            ],
        }
    ).encode()


def test_docker_manifest_becomes_oci_with_annotations_on_converted_layers_only() -> None:
    out = json.loads(
        rewrite_manifest(docker_manifest(), {D[2]: converted(D[2], D[5])}, D[6], 77, OCI_LAYER_GZIP)
    )
    assert out["mediaType"] == OCI_MANIFEST
    assert out["config"] == {"mediaType": OCI_CONFIG, "digest": D[6], "size": 77}
    first, foreign = out["layers"]
    assert first == {
        "mediaType": OCI_LAYER_GZIP,
        "digest": D[5],
        "size": 1234,
        "annotations": {TOC_DIGEST_ANNOTATION: D[10], UNCOMPRESSED_SIZE_ANNOTATION: "4096"},
    }
    assert foreign["mediaType"] == OCI_LAYER_NONDISTRIBUTABLE_GZIP
    assert foreign["digest"] == D[3] and foreign["urls"] == ["https://example.invalid/layer"]
    assert "annotations" not in foreign


def test_oci_manifest_keeps_unknown_fields_extras_and_own_annotations_drops_stale_ones() -> None:
    source = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "x/y",
        "config": {"mediaType": OCI_CONFIG, "digest": D[1], "size": 10, "annotations": {"c": "1"}},
        "layers": [
            {
                "mediaType": OCI_LAYER_ZSTD,
                "digest": D[2],
                "size": 20,
                "annotations": {
                    "org.example/keep": "yes",
                    MANIFEST_CHECKSUM_ANNOTATION: D[4],
                    TOC_DIGEST_ANNOTATION: D[4],
                },
            },
            {"mediaType": FIELD_TYPE, "digest": D[3], "size": 5},
        ],
        "annotations": {"org.opencontainers.image.title": "m"},
    }
    out = json.loads(
        rewrite_manifest(
            json.dumps(source).encode(), {D[2]: converted(D[2], D[5])}, D[6], 77, OCI_LAYER_ZSTD
        )
    )
    assert out["artifactType"] == "x/y"
    assert out["annotations"] == {"org.opencontainers.image.title": "m"}
    assert out["config"]["annotations"] == {"c": "1"}
    layer, field_descriptor = out["layers"]
    assert layer["mediaType"] == OCI_LAYER_ZSTD
    assert layer["annotations"] == {
        "org.example/keep": "yes",
        TOC_DIGEST_ANNOTATION: D[10],
        UNCOMPRESSED_SIZE_ANNOTATION: "4096",
    }
    assert field_descriptor == {"mediaType": FIELD_TYPE, "digest": D[3], "size": 5}
    assert list(out)[:2] == ["schemaVersion", "mediaType"]


def test_manifest_without_layers_is_refused() -> None:
    with pytest.raises(UnsupportedImageError):
        rewrite_manifest(b'{"schemaVersion":2,"manifests":[]}', {}, D[1], 1, OCI_LAYER_GZIP)


def config_bytes(diff_ids: list[str]) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["A=1"]},
            "history": [{"created_by": "x"}],
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()


def test_config_diff_ids_replaced_in_place_everything_else_kept() -> None:
    data = config_bytes([D[1], D[2], D[3]])
    out = json.loads(rewrite_config(data, {D[2]: D[12], D[1]: D[11]}))
    assert out["rootfs"] == {"type": "layers", "diff_ids": [D[11], D[12], D[3]]}
    assert out["config"] == {"Env": ["A=1"]} and out["history"] == [{"created_by": "x"}]


def test_unchanged_config_keeps_its_bytes_and_so_its_digest() -> None:
    data = config_bytes([D[1], D[2]])
    assert rewrite_config(data, {D[1]: D[1]}) is data
    assert rewrite_config(data, {}) is data


def test_a_layer_whose_diff_id_is_not_in_the_config_is_an_integrity_error() -> None:
    with pytest.raises(ConfigMismatchError, match=D[7]):
        rewrite_config(config_bytes([D[1]]), {D[7]: D[8]})


def test_config_without_diff_ids_is_refused() -> None:
    with pytest.raises(UnsupportedImageError):
        rewrite_config(b'{"rootfs":{}}', {})
    with pytest.raises(UnsupportedImageError):
        rewrite_config(b"not json", {})


def test_docker_list_becomes_oci_index_platforms_kept_attestations_dropped() -> None:
    source = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": D[1],
                "size": 10,
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": D[2],
                "size": 11,
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": D[3],
                "size": 12,
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": D[1],
                },
            },
        ],
    }
    data, dropped = rewrite_index(
        json.dumps(source).encode(), {D[1]: (D[11], 100), D[2]: (D[12], 200)}
    )
    out = json.loads(data)
    assert dropped == [D[3]]
    assert out["mediaType"] == OCI_INDEX
    assert out["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": D[11],
            "size": 100,
            "platform": {"architecture": "amd64", "os": "linux"},
        },
        {
            "mediaType": OCI_MANIFEST,
            "digest": D[12],
            "size": 200,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        },
    ]


def test_index_entry_left_unconverted_is_refused_rather_than_left_dangling() -> None:
    source = {"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": D[1]}]}
    with pytest.raises(UnsupportedImageError, match=D[1]):
        rewrite_index(json.dumps(source).encode(), {})


def plain_tar() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in (("a/x.bin", bytes(range(256)) * 300), ("a/y", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 946684800
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def compress(codec: str, tar: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(tar[:5000]) + gzip.compress(tar[5000:])  # two members
    if codec == "zstd":
        zstd = zstandard.ZstdCompressor()
        skippable = b"\x50\x2a\x4d\x18\x04\x00\x00\x00skip"  # as zstd:chunked has
        return zstd.compress(tar[:5000]) + skippable + zstd.compress(tar[5000:])
    return tar


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_decompress_detects_the_format_and_returns_the_diff_id(tmp_path: Path, codec: str) -> None:
    tar = plain_tar()
    blob = compress(codec, tar)
    (tmp_path / "src").write_bytes(blob)
    seen: list[int] = []
    diff_id = decompress_layer(tmp_path / "src", tmp_path / "tar", seen.append)
    assert (tmp_path / "tar").read_bytes() == tar
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert seen and seen[-1] <= len(blob)


def test_corrupt_layer_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(gzip.compress(plain_tar())[:-20] + b"\x00" * 20)
    with pytest.raises(UnsupportedImageError):
        decompress_layer(tmp_path / "src", tmp_path / "tar", lambda n: None)


@pytest.mark.parametrize("zstd", [False, True])
def test_converted_layer_changes_its_diff_id_and_is_deterministic(
    tmp_path: Path, zstd: bool
) -> None:
    """The eStargz tar gains a landmark and the TOC entry, so the diff ID always changes:
    this is why convert must rewrite the config."""
    tar = plain_tar()
    (tmp_path / "tar").write_bytes(tar)
    options = ConvertOptions(
        compression=Compression.ZSTD if zstd else Compression.GZIP, chunk_size=4096, workers=2
    )
    first = convert_layer_file(tmp_path / "tar", tmp_path / "o1", options, lambda n: None)
    second = convert_layer_file(tmp_path / "tar", tmp_path / "o2", options, lambda n: None)
    assert first.diff_id != "sha256:" + hashlib.sha256(tar).hexdigest()
    assert first == second
    assert (tmp_path / "o1").read_bytes() == (tmp_path / "o2").read_bytes()
    assert options.compression is (Compression.ZSTD if zstd else Compression.GZIP)
    assert (MANIFEST_CHECKSUM_ANNOTATION in first.annotations) is zstd


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_draws_bars_with_rate_and_eta_on_a_terminal() -> None:
    stream = FakeTerminal(tty=True)
    progress = Progress(stream)
    progress.step("layer 1: convert")
    progress.update(1 << 20, 2 << 20)
    progress.update(2 << 20, 2 << 20)
    progress.update(1 << 20, 1 << 20, label="push a")  # a transfer of its own, done at once
    progress.done("pushed x")
    text = stream.getvalue()
    assert text.startswith("layer 1: convert\n") and text.endswith("pushed x\n")
    # tqdm's bar: percentage, bar, done/total, [elapsed<remaining, rate].
    bar = r"{}: +\d+%\|[^|]*\| [\d.]+[kMG]?/{} \[[\d:]+<[\d:?]+, [^]]*B/s\]"
    assert re.search("\r" + bar.format("layer 1: convert", "2.00M"), text)
    assert re.search("\r" + bar.format("push a", "1.00M"), text)


def test_progress_writes_plain_lines_without_byte_counts_elsewhere() -> None:
    stream = FakeTerminal(tty=False)
    progress = Progress(stream)
    progress.step("layer 1: convert")
    progress.update(1, 2)
    progress.done("pushed x")
    assert stream.getvalue() == "layer 1: convert\npushed x\n"
