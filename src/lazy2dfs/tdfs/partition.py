"""Partitioning a 2DFS image on the client: pick allotments, turn them into ordinary layers.

The 2DFS registry does this server-side when asked for ``tag--x1.y1.x2.y2``
(``ConvertTdfsManifestToOciManifest``): the field descriptor is removed, the selected allotments
are appended after the base layers as ``application/vnd.oci.image.layer.v1.tar+gzip`` layers,
and their diff IDs are appended to the config's ``rootfs.diff_ids``. lazy2dfs computes the same
image here so that any OCI registry works. Deliberate differences from upstream:

- an allotment inside two rectangles of a union is added once (upstream adds it twice and
  leaves a TODO), and allotments keep field order whatever the order of the rectangles;
- a rectangle entirely outside the field, or a selection without any allotment, is an error
  (upstream silently serves the base image);
- eStargz allotments carry the ``toc.digest`` and ``uncompressed-size`` annotations, so that a
  lazy snapshotter can mount them;
- the config keeps every key and its order (upstream re-encodes it through Go's ``v1.Image``,
  which drops unknown keys), written as compact JSON.

Everything here is pure: same inputs, same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazy2dfs.registry_client import (
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    Partition,
    sha256_digest,
)
from lazy2dfs.tdfs.errors import (
    BlobSizeUnknownError,
    EmptyPartitionError,
    ImageConfigError,
    NotA2dfsImageError,
    PartitionOutsideFieldError,
)
from lazy2dfs.tdfs.field import FIELD_MEDIA_TYPE, Allotment, Field


class PartitionedImage(NamedTuple):
    """The image a partition names: an OCI manifest and its config, ready to hand to containerd."""

    manifest: bytes
    config: bytes

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)


def select_allotments(field: Field, partitions: Sequence[Partition]) -> tuple[Allotment, ...]:
    """The non-empty allotments inside any of ``partitions``, in field order, each once.

    No partitions means the whole field (a 2DFS reference without suffix runs the full model).
    """
    if not partitions:
        selected = tuple(field.allotments())
        if not selected:
            raise EmptyPartitionError("the field has no allotment")
        return selected
    for partition in partitions:
        if partition.x1 >= field.row_count or partition.y1 >= field.col_count:
            raise PartitionOutsideFieldError(
                f"partition {partition} is outside the field of {field.row_count} rows and "
                f"{field.col_count} columns (rows 0..{field.row_count - 1}, "
                f"columns 0..{field.col_count - 1})"
            )
    selected = tuple(
        allotment
        for allotment in field.allotments()
        if any(p.contains(allotment.row, allotment.col) for p in partitions)
    )
    if not selected:
        names = "--".join(str(p) for p in partitions)
        raise EmptyPartitionError(f"partition {names} selects no allotment (only empty cells)")
    return selected


def field_descriptor(manifest: ImageManifest) -> Descriptor:
    """The manifest's one field descriptor; ``NotA2dfsImageError`` when there is none or several."""
    found = [layer for layer in manifest.layers if layer.media_type == FIELD_MEDIA_TYPE]
    if len(found) != 1:
        raise NotA2dfsImageError(
            f"image manifest has {len(found)} layers of type {FIELD_MEDIA_TYPE}, expected 1"
        )
    return found[0]


def allotment_layer(allotment: Allotment, size: int) -> Descriptor:
    """The ordinary layer descriptor of an allotment, annotated when it is eStargz."""
    annotations: dict[str, str] | None = None
    if allotment.toc_digest is not None:
        annotations = {TOC_DIGEST_ANNOTATION: "sha256:" + allotment.toc_digest}
        if allotment.uncompressed_size is not None:
            annotations[UNCOMPRESSED_SIZE_ANNOTATION] = str(allotment.uncompressed_size)
    return Descriptor(
        mediaType=OCI_LAYER_ZSTD if allotment.compression == "zstd" else OCI_LAYER_GZIP,
        digest=allotment.blob_digest,
        size=size,
        annotations=annotations,
    )


def missing_sizes(field: Field, partitions: Sequence[Partition]) -> tuple[str, ...]:
    """Blob digests of selected allotments whose field entry has no size (stock builder)."""
    return tuple(a.blob_digest for a in select_allotments(field, partitions) if a.size is None)


def partition_image(
    manifest: ImageManifest,
    config: bytes,
    field: Field,
    partitions: Sequence[Partition],
    blob_sizes: Mapping[str, int] | None = None,
) -> PartitionedImage:
    """The partitioned image of a 2DFS platform manifest, its config and its (parsed) field.

    ``blob_sizes`` maps ``sha256:<hex>`` to the blob size of allotments whose field entry lacks
    one (see :func:`missing_sizes`); a size in the field wins because it was written at build.
    """
    field_descriptor(manifest)
    selected = select_allotments(field, partitions)
    base_layers = [layer for layer in manifest.layers if layer.media_type != FIELD_MEDIA_TYPE]
    document = _config_document(config, len(base_layers))
    sizes = blob_sizes or {}
    new_layers = []
    for allotment in selected:
        size = allotment.size if allotment.size is not None else sizes.get(allotment.blob_digest)
        if size is None:
            raise BlobSizeUnknownError(
                f"size of allotment row {allotment.row} col {allotment.col} "
                f"({allotment.blob_digest}) is unknown: HEAD the blob and pass it in blob_sizes"
            )
        new_layers.append(allotment_layer(allotment, size))
    document["rootfs"]["diff_ids"].extend(a.diff_id_digest for a in selected)
    config_bytes = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    config_descriptor = manifest.config.model_copy(
        update={"digest": sha256_digest(config_bytes), "size": len(config_bytes)}
    )
    out: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor_json(config_descriptor),
        "layers": [_descriptor_json(layer) for layer in [*base_layers, *new_layers]],
    }
    if manifest.annotations:
        out["annotations"] = manifest.annotations
    manifest_bytes = json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()
    return PartitionedImage(manifest_bytes, config_bytes)


def _config_document(config: bytes, base_layer_count: int) -> dict[str, Any]:
    try:
        document = json.loads(config)
    except (ValueError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise ImageConfigError(f"image config is not JSON: {err}") from None
    rootfs = document.get("rootfs") if isinstance(document, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageConfigError("image config has no rootfs.diff_ids list")
    if len(diff_ids) != base_layer_count:
        raise ImageConfigError(
            f"image config lists {len(diff_ids)} diff IDs for {base_layer_count} base layers"
        )
    assert isinstance(document, dict)
    return document


def _descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    return descriptor.model_dump(by_alias=True, exclude_none=True, mode="json")
