import json

import pytest

from lazy2dfs.registry_client import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    DescriptorPlatform,
    sha256_digest,
)
from lazy2dfs.tdfs import FIELD_MEDIA_TYPE, IMAGE_NAME_ANNOTATION, NotA2dfsImageError
from lazy2dfs.tdfs.compose import BaseManifest, compose_image

DOCKER_MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 3,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": "sha256:" + "1" * 64,
                "size": 5,
            }
        ],
        "x-extra": 1,
    }
).encode()
FIELD = b'{"rows":[],"rows_size":0,"owner":""}'


def _base(data: bytes) -> BaseManifest:
    return BaseManifest(
        data,
        Descriptor(
            mediaType="application/vnd.docker.distribution.manifest.v2+json",
            digest=sha256_digest(data),
            size=len(data),
            platform=DescriptorPlatform(os="linux", architecture="arm64", variant="v8"),
            annotations={"a": "b"},
        ),
    )


def test_base_manifest_gets_the_field_after_its_layers_in_oci_types() -> None:
    image = compose_image([_base(DOCKER_MANIFEST)], FIELD, "r.io/m:v1", {"base": "kept"})
    (data,) = image.manifests
    manifest = json.loads(data)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert manifest["config"]["digest"] == "sha256:" + "c" * 64
    media_types = [layer["mediaType"] for layer in manifest["layers"]]
    assert media_types == [OCI_LAYER_GZIP, FIELD_MEDIA_TYPE]
    assert manifest["layers"][1] == {
        "mediaType": FIELD_MEDIA_TYPE,
        "digest": sha256_digest(FIELD),
        "size": len(FIELD),
    }
    assert manifest["x-extra"] == 1

    index = json.loads(image.index)
    assert index["mediaType"] == OCI_INDEX
    assert index["annotations"] == {"base": "kept", IMAGE_NAME_ANNOTATION: "r.io/m:v1"}
    (entry,) = index["manifests"]
    assert entry["mediaType"] == OCI_MANIFEST
    assert entry["digest"] == sha256_digest(data) and entry["size"] == len(data)
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert entry["annotations"] == {"a": "b"}
    assert image.index_digest == sha256_digest(image.index)


def test_compose_is_deterministic() -> None:
    first = compose_image([_base(DOCKER_MANIFEST)], FIELD, "r.io/m:v1")
    assert first == compose_image([_base(DOCKER_MANIFEST)], FIELD, "r.io/m:v1")


def test_a_2dfs_base_is_refused() -> None:
    once = compose_image([_base(DOCKER_MANIFEST)], FIELD, "r.io/m:v1").manifests[0]
    with pytest.raises(NotA2dfsImageError, match="already a 2DFS image"):
        compose_image([_base(once)], FIELD, "r.io/m:v2")
