"""The 2DFS image as the builder lays it out: base manifests plus the field, in an OCI index.

Each platform manifest of the base image gets one more entry after its layers, the field
descriptor; its config is unchanged (``rootfs.diff_ids`` lists the base layers only). The index
lists one manifest per platform, keeps the base index's annotations and adds
``2dfs.image.name`` = the target ``registry/repository:tag``, as upstream's ``AddField`` does.

A Docker schema 2 base is written in OCI media types (same bytes for config and layers), because
only OCI manifests and indexes carry the annotations a 2DFS image needs. Everything else in a
base manifest, unknown keys included, is kept as it was. Pure: same inputs, same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lazy2dfs.registry_client import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    oci_media_type,
    sha256_digest,
)
from lazy2dfs.tdfs.errors import NotA2dfsImageError
from lazy2dfs.tdfs.field import FIELD_MEDIA_TYPE, IMAGE_NAME_ANNOTATION


@dataclass(frozen=True, slots=True)
class BaseManifest:
    """One platform of the base image: its manifest bytes and the index entry naming it."""

    data: bytes
    entry: Descriptor


@dataclass(frozen=True, slots=True)
class ComposedImage:
    index: bytes
    manifests: tuple[bytes, ...]

    @property
    def index_digest(self) -> str:
        return sha256_digest(self.index)


def compose_image(
    bases: Sequence[BaseManifest],
    field: bytes,
    image_name: str,
    index_annotations: Mapping[str, str] | None = None,
) -> ComposedImage:
    """The index and platform manifests of a 2DFS image whose field blob is ``field``."""
    field_layer = {
        "mediaType": FIELD_MEDIA_TYPE,
        "digest": sha256_digest(field),
        "size": len(field),
    }
    manifests: list[bytes] = []
    entries: list[dict[str, Any]] = []
    for base in bases:
        document = json.loads(base.data)
        layers = document.get("layers") or []
        if any(layer.get("mediaType") == FIELD_MEDIA_TYPE for layer in layers):
            raise NotA2dfsImageError(
                f"base manifest {base.entry.digest} is already a 2DFS image (it has a field)"
            )
        document["mediaType"] = OCI_MANIFEST
        document["config"] = _oci(document["config"])
        document["layers"] = [*(_oci(layer) for layer in layers), field_layer]
        data = _json(document)
        manifests.append(data)
        entry = base.entry.model_dump(by_alias=True, exclude_none=True, mode="json")
        entry.update(mediaType=OCI_MANIFEST, digest=sha256_digest(data), size=len(data))
        entries.append(entry)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
        "annotations": {**(index_annotations or {}), IMAGE_NAME_ANNOTATION: image_name},
    }
    return ComposedImage(_json(index), tuple(manifests))


def _oci(descriptor: dict[str, Any]) -> dict[str, Any]:
    media_type = descriptor.get("mediaType", "")
    return {**descriptor, "mediaType": oci_media_type(media_type)}


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
