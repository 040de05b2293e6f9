import json

import pytest

from lazy2dfs.registry_client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageIndex,
    ImageManifest,
    MalformedManifestError,
    Platform,
    PlatformNotFoundError,
    UnsupportedManifestError,
    host_platform,
    parse_manifest,
    select_platform,
)

D = "sha256:" + "0" * 64


def desc(media_type: str, n: int, platform: dict[str, str] | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"mediaType": media_type, "digest": f"sha256:{n:064x}", "size": n}
    if platform is not None:
        entry["platform"] = platform
    return entry


def test_docker_manifest_by_content_type() -> None:
    doc = {
        "schemaVersion": 2,
        "config": desc("application/vnd.docker.container.image.v1+json", 1),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 2)],
        "extra": "ignored",
    }
    manifest = parse_manifest(json.dumps(doc).encode(), DOCKER_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    assert manifest.layers[0].size == 2


def test_index_recognised_by_shape_when_content_type_is_json() -> None:
    doc = {"schemaVersion": 2, "manifests": [desc(OCI_MANIFEST, 1)]}
    assert isinstance(parse_manifest(json.dumps(doc).encode(), "application/json"), ImageIndex)


def test_body_media_type_wins() -> None:
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": []}
    assert isinstance(parse_manifest(json.dumps(doc).encode(), OCI_MANIFEST), ImageIndex)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{", MalformedManifestError),
        (b"[]", MalformedManifestError),
        (b'{"schemaVersion": 1, "fsLayers": []}', UnsupportedManifestError),
        (b'{"schemaVersion": 2, "mediaType": "x/y"}', UnsupportedManifestError),
        (b'{"schemaVersion": 2, "config": {"digest": "md5:1", "size": 1}}', MalformedManifestError),
        (b'{"schemaVersion": 3, "manifests": []}', MalformedManifestError),
    ],
)
def test_bad_documents(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_manifest(data, OCI_MANIFEST)


def index(*entries: dict[str, object]) -> ImageIndex:
    parsed = parse_manifest(json.dumps({"manifests": list(entries)}).encode(), OCI_INDEX)
    assert isinstance(parsed, ImageIndex)
    return parsed


def test_select_platform_prefers_exact_variant_and_skips_attestations() -> None:
    chosen = index(
        desc(OCI_MANIFEST, 1, {"os": "unknown", "architecture": "unknown"}),
        desc(OCI_MANIFEST, 2, {"os": "linux", "architecture": "arm"}),
        desc(OCI_MANIFEST, 3, {"os": "linux", "architecture": "arm", "variant": "v7"}),
        desc(OCI_MANIFEST, 4, {"os": "linux", "architecture": "amd64"}),
        desc(OCI_INDEX, 5, {"os": "linux", "architecture": "amd64"}),
    )
    assert select_platform(chosen, Platform("linux", "arm", "v7")).size == 3
    assert select_platform(chosen, Platform("linux", "arm", "v6")).size == 2
    assert select_platform(chosen, Platform("linux", "amd64")).size == 4


def test_arm64_without_variant_is_v8() -> None:
    chosen = index(desc(OCI_MANIFEST, 1, {"os": "linux", "architecture": "arm64"}))
    assert select_platform(chosen, Platform("linux", "arm64", "v8")).size == 1


def test_entry_without_platform_is_the_last_resort() -> None:
    here = host_platform()
    chosen = index(
        desc(OCI_MANIFEST, 1),
        desc(OCI_MANIFEST, 2, {"os": here.os, "architecture": here.architecture}),
    )
    assert select_platform(chosen, host_platform()).size == 2
    assert select_platform(chosen, Platform("linux", "s390x")).size == 1


def test_no_platform() -> None:
    chosen = index(desc(OCI_MANIFEST, 1, {"os": "linux", "architecture": "amd64"}))
    with pytest.raises(PlatformNotFoundError, match="linux/amd64"):
        select_platform(chosen, Platform("linux", "riscv64"))


def test_to_json_round_trip() -> None:
    manifest = parse_manifest(
        json.dumps({"schemaVersion": 2, "config": desc("c", 1), "layers": []}).encode(),
        OCI_MANIFEST,
    )
    assert parse_manifest(manifest.to_json(), OCI_MANIFEST) == manifest
    assert b"mediaType" in manifest.to_json() and b"null" not in manifest.to_json()
