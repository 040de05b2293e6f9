"""Where a lazily served layer's blob is and what vouches for its TOC: ``LayerLocator``, and
``RegistryLocator``, which answers from labels or the image's manifest."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from lazy2dfs.digest import chain_ids
from lazy2dfs.errors import Lazy2dfsError
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION
from lazy2dfs.registry_client import (
    OCI_MANIFEST,
    BlobReader,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Reference,
    RegistryClient,
    parse_manifest,
    parse_reference,
)
from lazy2dfs.remote.fetch import BlobSource
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError
from lazy2dfs.tdfs.computed import ComputedImages
from lazy2dfs.tdfs.field import FIELD_MEDIA_TYPE
from lazy2dfs.tdfs.partition import PartitionedImage
from lazy2dfs.tdfs.resolve import fetch_partitioned_image

# Manifests and configs kept by digest: containerd prepares an image's layers one after
# another, and each Prepare of a CRI pull names the same two documents.
DOCUMENT_CACHE_BYTES = 8 << 20


@dataclass(frozen=True)
class Located:
    """What vouches for a layer's bytes: the TOC digest (``""`` when the manifest has none),
    the blob's size, and the diff ID the image's config gives it (``""`` when unknown); and,
    when the manifest was read, the image's later layers, as requests that carry all that
    (containerd will ask for them next)."""

    toc_digest: str
    size: int
    diff_id: str
    later: tuple[LayerRequest, ...] = ()


class LayerLocator(Protocol):
    """Where a layer's blob is; implemented over the registry client."""

    async def locate(self, request: LayerRequest) -> Located: ...

    def source(self, request: LayerRequest, size: int) -> BlobSource:
        """Range reads of the blob; no network until the first read."""
        ...


class RegistryLocator:
    """Learns a layer's TOC digest, size and diff ID from its labels when they carry them (as
    ``lazy2dfs pull`` writes them, from the manifest and config it verified — also for 2DFS
    partitions, whose manifest exists only on the client), else from the image's manifest and
    config. The config must name the layer by the chain ID containerd asked for, so that a
    label cannot tie a layer to another image's chain.

    A partition pulled through the partition mirror (CRI's labels name a partition tag and the
    computed manifest's digest) is read from ``computed``, or computed again from the field
    when the mirror no longer holds it (a restart): the registry has no such manifest."""

    def __init__(self, client: RegistryClient, computed: ComputedImages | None = None) -> None:
        self._client = client
        self._computed = computed or ComputedImages()
        self._documents: OrderedDict[str, tuple[bytes, str]] = OrderedDict()  # and media type
        self._document_bytes = 0

    async def locate(self, request: LayerRequest) -> Located:
        if request.layer_size:
            return Located(request.toc_digest, request.layer_size, request.diff_id)
        ref = parse_reference(request.reference)
        try:
            partitioned = await self._partitioned(ref, request.manifest_digest)
            if partitioned is not None:
                manifest = parse_manifest(partitioned.manifest, OCI_MANIFEST)
                pinned = ref.with_digest(partitioned.manifest_digest)
            elif request.manifest_digest:
                manifest = await self._manifest(ref, request.manifest_digest)
                pinned = ref.with_digest(request.manifest_digest)
            else:
                image = await self._client.get_image(ref)
                manifest, pinned = image.manifest, image.reference
        except Lazy2dfsError as exc:
            raise NotLazyError("no-manifest", f"manifest of {request.reference}: {exc}") from exc
        if not isinstance(manifest, ImageManifest):
            raise NotLazyError("no-manifest", f"{request.reference} names an index, not an image")
        # Counted among the layers the diff IDs list: a 2DFS field descriptor is not one.
        layers = [d for d in manifest.layers if d.media_type != FIELD_MEDIA_TYPE]
        position = next((i for i, d in enumerate(layers) if d.digest == request.layer_digest), None)
        if position is None:
            raise NotLazyError(
                "not-in-manifest",
                f"layer {request.layer_digest} is not in the manifest of {request.reference}",
            )
        layer = layers[position]
        toc = request.toc_digest or _toc_digest(layer)
        diff_ids = await self._diff_ids(pinned, manifest, len(layers), request)
        chains = chain_ids(diff_ids)
        if chains[position] != request.chain_id:
            raise NotLazyError(
                "chain-mismatch",
                f"snapshot {request.chain_id} is not layer {position} of {request.reference}"
                f" (its config gives chain ID {chains[position]})",
            )
        later = tuple(
            LayerRequest(
                chain_id=chains[i],
                reference=str(pinned),
                layer_digest=d.digest,
                manifest_digest=request.manifest_digest,
                toc_digest=_toc_digest(d),
                layer_size=d.size,
                diff_id=diff_ids[i],
            )
            for i, d in enumerate(layers)
            if i > position and _toc_digest(d)
        )
        return Located(toc, layer.size, diff_ids[position], later)

    async def _manifest(self, ref: Reference, digest: str) -> ImageManifest | ImageIndex:
        """The manifest ``digest`` names (verified against it when fetched)."""
        kept = self._kept(ref, digest)
        if kept is not None:
            return parse_manifest(*kept)
        fetched = await self._client.get_manifest(ref, digest)
        self._keep(ref, digest, fetched.data, fetched.descriptor.media_type)
        return fetched.manifest

    async def _blob(self, ref: Reference, digest: str) -> bytes:
        """A small blob (a config), verified against its digest when fetched."""
        kept = self._kept(ref, digest)
        if kept is not None:
            return kept[0]
        data = await self._client.get_blob(ref, digest)
        self._keep(ref, digest, data, "")
        return data

    def _kept(self, ref: Reference, digest: str) -> tuple[bytes, str] | None:
        key = _document_key(ref, digest)
        kept = self._documents.get(key)
        if kept is not None:
            self._documents.move_to_end(key)
        return kept

    def _keep(self, ref: Reference, digest: str, data: bytes, media_type: str) -> None:
        key = _document_key(ref, digest)
        if key in self._documents or len(data) > DOCUMENT_CACHE_BYTES:
            return
        self._documents[key] = (data, media_type)
        self._document_bytes += len(data)
        while self._document_bytes > DOCUMENT_CACHE_BYTES:
            self._document_bytes -= len(self._documents.popitem(last=False)[1][0])

    async def _partitioned(self, ref: Reference, manifest_digest: str) -> PartitionedImage | None:
        """The partitioned image CRI pulled through the mirror, or None for other images."""
        if not ref.partitions or not manifest_digest:
            return None
        image = self._computed.image(manifest_digest)
        if image is None:
            image = await fetch_partitioned_image(self._client, ref)
            if image.manifest_digest != manifest_digest:
                raise NotLazyError(
                    "no-manifest",
                    f"{ref} names manifest {image.manifest_digest} now, not {manifest_digest}",
                )
            self._computed.add(image)
        return image

    async def _diff_ids(
        self, ref: Reference, manifest: ImageManifest, count: int, request: LayerRequest
    ) -> list[str]:
        """The diff IDs the image's config lists, one for each of its ``count`` layers."""
        try:
            blob = self._computed.config(manifest.config.digest)
            if blob is None:
                blob = await self._blob(ref, manifest.config.digest)
            config = json.loads(blob)
            diff_ids = config["rootfs"]["diff_ids"]
        except (Lazy2dfsError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise NotLazyError("no-config", f"config of {request.reference}: {exc!r}") from exc
        if not isinstance(diff_ids, list) or len(diff_ids) != count:
            raise NotLazyError(
                "no-config", f"config of {request.reference} does not list a diff ID per layer"
            )
        return [str(d) for d in diff_ids]

    def source(self, request: LayerRequest, size: int) -> BlobReader:
        return self._client.blob_reader(request.reference, request.layer_digest, size)


def _toc_digest(layer: Descriptor) -> str:
    return (layer.annotations or {}).get(TOC_DIGEST_ANNOTATION, "")


def _document_key(ref: Reference, digest: str) -> str:
    """Kept per repository: a digest known from another registry or repository must not
    stand in for a fetch there, which could be refused (the same rule as for blobs)."""
    return f"{ref.registry}/{ref.repository}@{digest}"
