"""Where a lazily served layer's blob is and what vouches for its TOC: ``LayerLocator``, and
``RegistryLocator``, which answers from labels or the image's manifest."""

from __future__ import annotations

from typing import Protocol

from lazy2dfs.errors import Lazy2dfsError
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION
from lazy2dfs.registry_client import (
    BlobReader,
    ImageManifest,
    RegistryClient,
    parse_reference,
)
from lazy2dfs.remote.reader import BlobSource
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError


class LayerLocator(Protocol):
    """Where a layer's blob is; implemented over the registry client."""

    async def locate(self, request: LayerRequest) -> tuple[str, int]:
        """The layer's TOC digest (``""`` when the manifest has none) and blob size."""
        ...

    def source(self, request: LayerRequest, size: int) -> BlobSource:
        """Range reads of the blob; no network until the first read."""
        ...


class RegistryLocator:
    """Learns a layer's TOC digest and size from its labels when they carry the size (as
    ``lazy2dfs pull`` writes them, from the manifest it verified — also for 2DFS partitions,
    whose manifest exists only on the client), else from the image's manifest."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    async def locate(self, request: LayerRequest) -> tuple[str, int]:
        if request.layer_size:
            return request.toc_digest, request.layer_size
        ref = parse_reference(request.reference)
        try:
            if request.manifest_digest:
                fetched = await self._client.get_manifest(ref, request.manifest_digest)
                manifest = fetched.manifest
            else:
                manifest = (await self._client.get_image(ref)).manifest
        except Lazy2dfsError as exc:
            raise NotLazyError("no-manifest", f"manifest of {request.reference}: {exc}") from exc
        if not isinstance(manifest, ImageManifest):
            raise NotLazyError("no-manifest", f"{request.reference} names an index, not an image")
        for layer in manifest.layers:
            if layer.digest == request.layer_digest:
                toc = (layer.annotations or {}).get(TOC_DIGEST_ANNOTATION, "")
                return request.toc_digest or toc, layer.size
        raise NotLazyError(
            "not-in-manifest",
            f"layer {request.layer_digest} is not in the manifest of {request.reference}",
        )

    def source(self, request: LayerRequest, size: int) -> BlobReader:
        return self._client.blob_reader(request.reference, request.layer_digest, size)
