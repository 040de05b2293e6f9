"""The pure part of a conversion: manifests, configs and indexes rewritten, bytes in and
bytes out, so that every rule can be tested without a registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from lazy2dfs.convert.errors import ConfigMismatchError, UnsupportedImageError
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazy2dfs.estargz.zstdchunked import (
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
)
from lazy2dfs.registry_client import (
    DOCKER_LAYER_GZIP,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    oci_media_type,
)

# Layers we download and rewrite; anything else (2DFS fields, in-toto, foreign layers) is copied.
CONVERTIBLE_LAYERS: Final = frozenset(
    {OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, "application/x-tar"}
)
# Annotations that describe a blob's format; stale once the blob is rewritten.
FORMAT_ANNOTATIONS: Final = frozenset(
    {
        TOC_DIGEST_ANNOTATION,
        UNCOMPRESSED_SIZE_ANNOTATION,
        MANIFEST_CHECKSUM_ANNOTATION,
        MANIFEST_POSITION_ANNOTATION,
        "io.containers.zstd-chunked.tarsplit-checksum",
        "io.containers.zstd-chunked.tarsplit-position",
    }
)
# BuildKit's provenance/SBOM manifests point at the source manifests' digests by annotation;
# after conversion they would describe images that are not in the index, so they are dropped.
_ATTESTATION_KEY: Final = "vnd.docker.reference.type"


@dataclass(frozen=True)
class ConvertedLayer:
    """One source layer and what it became."""

    source_digest: str
    source_diff_id: str
    digest: str
    size: int
    diff_id: str
    toc_digest: str
    annotations: Mapping[str, str]
    pushed: bool


def load_document(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise UnsupportedImageError(f"{what} is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise UnsupportedImageError(f"{what} is not a JSON object")
    return document


def _dump(document: Mapping[str, Any]) -> bytes:
    """Compact JSON in the document's own key order, so that unknown fields survive."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def is_convertible(media_type: str) -> bool:
    return media_type in CONVERTIBLE_LAYERS


def layer_descriptor(
    source: Mapping[str, Any], layer: ConvertedLayer, media_type: str
) -> dict[str, Any]:
    """The descriptor of a converted layer: the source's own annotations minus stale format
    ones, plus the new format's. ``urls`` are dropped: the new blob is only in the registry."""
    annotations = {
        key: value
        for key, value in (source.get("annotations") or {}).items()
        if key not in FORMAT_ANNOTATIONS
    }
    annotations.update(layer.annotations)
    descriptor: dict[str, Any] = {
        "mediaType": media_type,
        "digest": layer.digest,
        "size": layer.size,
        "annotations": annotations,
    }
    return descriptor


def rewrite_config(data: bytes, diff_ids: Mapping[str, str]) -> bytes:
    """``data`` with each ``rootfs.diff_ids`` entry replaced through ``diff_ids``.

    Returns ``data`` itself when nothing changes, so an unchanged config keeps its digest.
    Raises :class:`ConfigMismatchError` when a converted layer's source diff ID is absent.
    """
    config = load_document(data, "image config")
    rootfs = config.get("rootfs")
    listed = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
        raise UnsupportedImageError("image config has no rootfs.diff_ids list")
    missing = sorted(set(diff_ids) - set(listed))
    if missing:
        raise ConfigMismatchError(
            f"layers with diff IDs {missing} are not in the config's rootfs.diff_ids"
        )
    replaced = [diff_ids.get(d, d) for d in listed]
    if replaced == listed:
        return data
    assert isinstance(rootfs, dict)
    rootfs["diff_ids"] = replaced
    return _dump(config)


def rewrite_manifest(
    data: bytes,
    layers: Mapping[str, ConvertedLayer],
    config_digest: str,
    config_size: int,
    layer_media_type: str,
) -> bytes:
    """The OCI manifest for ``data`` (OCI or Docker schema 2) with converted layers.

    ``layers`` maps a source layer digest to its conversion; descriptors not in it (2DFS
    fields, foreign layers, artifacts) are kept, with Docker media types renamed to OCI.
    """
    manifest = load_document(data, "manifest")
    if not isinstance(manifest.get("config"), dict) or not isinstance(manifest.get("layers"), list):
        raise UnsupportedImageError("manifest has no config or layers")
    out = dict(manifest)
    out["mediaType"] = OCI_MANIFEST
    config = dict(manifest["config"])
    config.update(
        mediaType=oci_media_type(str(config.get("mediaType", OCI_CONFIG))),
        digest=config_digest,
        size=config_size,
    )
    out["config"] = config
    new_layers: list[dict[str, Any]] = []
    for source in manifest["layers"]:
        if not isinstance(source, dict):
            raise UnsupportedImageError("manifest layer is not an object")
        converted = layers.get(str(source.get("digest")))
        if converted is not None:
            new_layers.append(layer_descriptor(source, converted, layer_media_type))
        else:
            kept = dict(source)
            kept["mediaType"] = oci_media_type(str(source.get("mediaType", "")))
            new_layers.append(kept)
    out["layers"] = new_layers
    # Keep the document's own key order, with mediaType right after schemaVersion as usual.
    ordered = {"schemaVersion": out.pop("schemaVersion", 2), "mediaType": out.pop("mediaType")}
    ordered.update(out)
    return _dump(ordered)


def rewrite_index(data: bytes, manifests: Mapping[str, tuple[str, int]]) -> tuple[bytes, list[str]]:
    """The OCI index for ``data`` with each entry whose digest is in ``manifests`` pointed at
    its conversion ``(digest, size)``; attestation entries are dropped (their digests are
    returned), and any other entry is an error, because it would dangle."""
    index = load_document(data, "index")
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise UnsupportedImageError("index has no manifests list")
    kept: list[dict[str, Any]] = []
    dropped: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise UnsupportedImageError("index entry is not an object")
        digest = str(entry.get("digest"))
        if is_attestation(entry):
            dropped.append(digest)
            continue
        if digest not in manifests:
            raise UnsupportedImageError(f"index entry {digest} was not converted")
        new_digest, new_size = manifests[digest]
        rewritten = dict(entry)
        rewritten.update(
            mediaType=oci_media_type(str(entry.get("mediaType", OCI_MANIFEST))),
            digest=new_digest,
            size=new_size,
        )
        kept.append(rewritten)
    out = dict(index)
    out.pop("mediaType", None)
    ordered = {"schemaVersion": out.pop("schemaVersion", 2), "mediaType": OCI_INDEX}
    ordered.update(out)
    ordered["manifests"] = kept
    return _dump(ordered), dropped


def is_attestation(entry: Mapping[str, Any]) -> bool:
    annotations = entry.get("annotations") or {}
    return isinstance(annotations, dict) and annotations.get(_ATTESTATION_KEY) == (
        "attestation-manifest"
    )
