"""OCI and Docker schema 2 manifests and indexes, and picking a platform from an index.

The models accept what registries serve (unknown fields are ignored) and only require what this
project uses. Bytes are always verified against their digest before they are parsed (see
``client.py``); the models never compute digests, because re-serialising JSON changes them.
"""

from __future__ import annotations

import json
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lazy2dfs.digest import InvalidDigestError, validate_digest
from lazy2dfs.registry_client.errors import (
    MalformedManifestError,
    PlatformNotFoundError,
    UnsupportedManifestError,
)
from lazy2dfs.registry_client.platform import Platform

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP: Final = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
_DOCKER_TO_OCI: Final = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_FOREIGN_LAYER: OCI_LAYER_NONDISTRIBUTABLE_GZIP,
}

MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
# Sent as Accept on manifest requests; without it Docker Hub would convert to schema 1.
ACCEPT: Final = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
# containerd refuses manifests above 4 MiB; so do we, before parsing anything bigger.
MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024


def oci_media_type(media_type: str) -> str:
    """The OCI media type for a Docker one; OCI and unknown types are returned unchanged."""
    return _DOCKER_TO_OCI.get(media_type, media_type)


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    def to_json(self) -> bytes:
        """Compact JSON with the spec's field names, for pushing what this process built."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class DescriptorPlatform(_Model):
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = Field(default=None, alias="os.version")

    def to_platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant or "")


class Descriptor(_Model):
    """What a manifest says about a blob or another manifest: type, digest, size."""

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    urls: tuple[str, ...] | None = None
    annotations: dict[str, str] | None = None
    platform: DescriptorPlatform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        try:
            return validate_digest(value)
        except InvalidDigestError as err:
            raise ValueError(str(err)) from None


class ImageManifest(_Model):
    schema_version: Literal[2] = Field(default=2, alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class ImageIndex(_Model):
    schema_version: Literal[2] = Field(default=2, alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


def parse_manifest(data: bytes, media_type: str) -> ImageManifest | ImageIndex:
    """Parses verified manifest bytes; ``media_type`` is the registry's Content-Type.

    The ``mediaType`` field inside the document wins over the header, and a document of unknown
    type is recognised by its shape (``manifests`` or ``config``), because some registries answer
    ``application/json``.
    """
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise MalformedManifestError(f"manifest is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise MalformedManifestError("manifest is not a JSON object")
    if document.get("schemaVersion") == 1:
        raise UnsupportedManifestError("Docker schema 1 manifests are not supported")
    kind = document.get("mediaType") or media_type.split(";", 1)[0].strip()
    model: type[ImageManifest] | type[ImageIndex]
    if kind in INDEX_TYPES or (kind not in MANIFEST_TYPES and "manifests" in document):
        model = ImageIndex
    elif kind in MANIFEST_TYPES or "config" in document:
        model = ImageManifest
    else:
        raise UnsupportedManifestError(f"unsupported manifest media type {kind!r}")
    try:
        return model.model_validate(document)
    except ValidationError as err:
        raise MalformedManifestError(f"invalid {model.__name__}: {err}") from None


def select_platform(index: ImageIndex, wanted: Platform) -> Descriptor:
    """The index entry to run on ``wanted``.

    An entry whose platform matches exactly (variant included) wins over a lenient match, which
    wins over an entry without platform (2DFS and some tools write none). Entries that are not
    image manifests (attestations, nested indexes) are skipped.
    """
    exact: list[Descriptor] = []
    lenient: list[Descriptor] = []
    unlabelled: list[Descriptor] = []
    want = wanted.normalized()
    for entry in index.manifests:
        if entry.media_type not in MANIFEST_TYPES:
            continue
        if entry.platform is None:
            unlabelled.append(entry)
        elif entry.platform.to_platform().normalized() == want:
            exact.append(entry)
        elif wanted.matches(entry.platform.to_platform()):
            lenient.append(entry)
    for group in (exact, lenient, unlabelled):
        if group:
            return group[0]
    offered = sorted(
        {str(e.platform.to_platform()) for e in index.manifests if e.platform is not None}
    )
    raise PlatformNotFoundError(f"no manifest for {wanted} in index (offers: {offered})")
