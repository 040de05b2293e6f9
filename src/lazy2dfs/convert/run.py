"""A conversion's registry I/O: every platform manifest of an image (an index stays an index)
rewritten and pushed, blobs the destination has skipped, so a second run pushes nothing."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from lazy2dfs.convert.documents import (
    ConvertedLayer,
    is_attestation,
    is_convertible,
    load_document,
    rewrite_config,
    rewrite_index,
    rewrite_manifest,
)
from lazy2dfs.convert.errors import UnsupportedImageError
from lazy2dfs.convert.layer import ConvertOptions, convert_layer_file, decompress_layer
from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.progress import Progress, human_bytes
from lazy2dfs.registry_client import (
    OCI_INDEX,
    OCI_MANIFEST,
    BlobNotFoundError,
    ManifestNotFoundError,
    Reference,
    RegistryClient,
    parse_reference,
    sha256_digest,
)


@dataclass
class ConvertResult:
    """What a run did: the pushed root (index or manifest) and counts for the summary."""

    root_digest: str = ""
    root_media_type: str = ""
    layers: dict[str, ConvertedLayer] = field(default_factory=dict)
    blobs_pushed: int = 0
    blobs_present: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    dropped: list[str] = field(default_factory=list)


class _Run:
    def __init__(
        self,
        client: RegistryClient,
        src: Reference,
        dst: Reference,
        options: ConvertOptions,
        progress: Progress,
        workdir: Path,
    ) -> None:
        self.client = client
        self.src = src
        self.dst = dst
        self.options = options
        self.progress = progress
        self.workdir = workdir
        self.result = ConvertResult()
        self._layer_count = 0

    def _at(self, digest: str) -> Reference:
        """``dst`` pinned to ``digest``, untagged: where a child manifest is pushed."""
        return Reference(self.dst.registry, self.dst.repository, None, digest)

    async def run(self) -> ConvertResult:
        root = await self.client.get_manifest(self.src)
        if "manifests" in load_document(root.data, "root manifest"):
            data, media_type = await self._index(root.data)
        else:
            data, media_type = await self._manifest(root.data, root.descriptor.digest)
        digest = sha256_digest(data)
        self.result.root_digest, self.result.root_media_type = digest, media_type
        target = self.dst.tag or ""
        try:
            current = (await self.client.get_manifest(self.dst)).descriptor.digest
        except ManifestNotFoundError:
            current = ""
        if current == digest:
            self.result.manifests_present += 1
        else:
            await self.client.push_manifest(self.dst, data, media_type)
            self.result.manifests_pushed += 1
        self.progress.done(f"pushed {self.dst.name}:{target}@{digest}")
        return self.result

    async def _index(self, data: bytes) -> tuple[bytes, str]:
        index = load_document(data, "index")
        converted: dict[str, tuple[str, int]] = {}
        for entry in index.get("manifests") or []:
            if not isinstance(entry, dict) or is_attestation(entry):
                continue
            digest = str(entry.get("digest"))
            child = await self.client.get_manifest(self.src, digest)
            if "manifests" in load_document(child.data, "nested index"):
                new, media_type = await self._index(child.data)
            else:
                new, media_type = await self._manifest(child.data, digest)
            await self._push_child(new, media_type)
            converted[digest] = (sha256_digest(new), len(new))
        new_index, dropped = rewrite_index(data, converted)
        self.result.dropped.extend(dropped)
        for digest in dropped:
            self.progress.step(f"dropped attestation manifest {digest}")
        return new_index, OCI_INDEX

    async def _push_child(self, data: bytes, media_type: str) -> None:
        digest = sha256_digest(data)
        try:
            await self.client.get_manifest(self._at(digest), digest)
            self.result.manifests_present += 1
            return
        except ManifestNotFoundError:
            pass
        await self.client.push_manifest(self._at(digest), data, media_type)
        self.result.manifests_pushed += 1

    async def _manifest(self, data: bytes, digest: str) -> tuple[bytes, str]:
        manifest = load_document(data, f"manifest {digest}")
        config = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(config, dict) or not isinstance(layers, list):
            raise UnsupportedImageError(f"{digest} is not an image manifest")
        converted: dict[str, ConvertedLayer] = {}
        for source in layers:
            if not isinstance(source, dict):
                raise UnsupportedImageError(f"manifest {digest}: layer is not an object")
            layer_digest = str(source.get("digest"))
            if is_convertible(str(source.get("mediaType"))):
                converted[layer_digest] = await self._layer(layer_digest, int(source["size"]))
            else:
                await self._copy_blob(layer_digest, source)
        config_data = await self.client.get_blob(self.src, str(config["digest"]))
        new_config = rewrite_config(
            config_data, {c.source_diff_id: c.diff_id for c in converted.values()}
        )
        config_digest = sha256_digest(new_config)
        await self._push(config_digest, new_config)
        return (
            rewrite_manifest(
                data, converted, config_digest, len(new_config), self.options.media_type
            ),
            OCI_MANIFEST,
        )

    async def _push(self, digest: str, data: bytes | Path, mount_from: str | None = None) -> bool:
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        pushed = await self.client.push_blob(
            self.dst,
            digest,
            data,
            mount_from=mount_from,
            progress=lambda n: self.progress.update(n, size, f"push {digest[7:19]}"),
        )
        if pushed:
            self.result.blobs_pushed += 1
        else:
            self.result.blobs_present += 1
        return pushed

    async def _copy_blob(self, digest: str, descriptor: Mapping[str, Any]) -> None:
        """A blob kept as it is must still exist in the destination repository."""
        try:
            await self.client.stat_blob(self.dst, digest)
            self.result.blobs_present += 1
            return
        except BlobNotFoundError:
            pass
        if descriptor.get("urls"):
            return  # a foreign layer lives at its URLs, not in the registry
        path = self.workdir / "copy"
        await self.client.download_blob(self.src, digest, path)
        mount_from = self.src.repository if self.src.registry == self.dst.registry else None
        try:
            await self._push(digest, path, mount_from)
        finally:
            path.unlink(missing_ok=True)

    async def _layer(self, digest: str, size: int) -> ConvertedLayer:
        done = self.result.layers.get(digest)
        if done is not None:
            return done  # shared between platforms: converted once per run
        self._layer_count += 1
        short = f"layer {self._layer_count} {digest[7:19]}"
        compressed = self.workdir / "layer.src"
        tar_path = self.workdir / "layer.tar"
        out_path = self.workdir / "layer.out"
        try:
            self.progress.step(f"{short}: download {human_bytes(size)}")
            await self.client.download_blob(
                self.src, digest, compressed, lambda n: self.progress.update(n, size)
            )
            self.progress.step(f"{short}: decompress")
            diff_id = await trio.to_thread.run_sync(
                decompress_layer,
                compressed,
                tar_path,
                lambda n: self.progress.update(n, size),
            )
            compressed.unlink()
            tar_size = tar_path.stat().st_size
            self.progress.step(f"{short}: convert ({self.options.workers} workers)")
            result = await trio.to_thread.run_sync(
                convert_layer_file,
                tar_path,
                out_path,
                self.options,
                lambda n: self.progress.update(n, tar_size),
            )
            tar_path.unlink()
            self.progress.step(f"{short}: push {human_bytes(result.blob_size)}")
            pushed = await self._push(result.blob_digest, out_path)
        finally:
            for path in (compressed, tar_path, out_path):
                path.unlink(missing_ok=True)
        layer = ConvertedLayer(
            source_digest=digest,
            source_diff_id=diff_id,
            digest=result.blob_digest,
            size=result.blob_size,
            diff_id=result.diff_id,
            toc_digest=result.toc_digest,
            annotations=dict(result.annotations),
            pushed=pushed,
        )
        self.result.layers[digest] = layer
        self.progress.step(
            f"{short}: -> {layer.digest} ({'pushed' if pushed else 'already in registry'})"
        )
        return layer


async def convert_async(
    client: RegistryClient,
    src: Reference | str,
    dst: Reference | str,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
    """Converts ``src`` (index or manifest) and pushes the result under ``dst``'s tag."""
    source = src if isinstance(src, Reference) else parse_reference(src)
    target = dst if isinstance(dst, Reference) else parse_reference(dst)
    if target.tag is None or target.digest is not None:
        raise InvalidArgumentError(f"{target}: the destination needs a tag and no digest")
    with tempfile.TemporaryDirectory(prefix="lazy2dfs-convert-") as workdir:
        run = _Run(
            client,
            source,
            target,
            options or ConvertOptions(),
            progress or Progress(),
            Path(workdir),
        )
        return await run.run()


def convert(
    src: str,
    dst: str,
    options: ConvertOptions | None = None,
    *,
    plain_http: bool = False,
    progress: Progress | None = None,
) -> ConvertResult:
    """Blocking :func:`convert_async` with a fresh client (plain HTTP to both registries when
    ``plain_http``)."""
    source, target = parse_reference(src), parse_reference(dst)
    hosts = sorted({source.registry, target.registry}) if plain_http else False

    async def main() -> ConvertResult:
        async with RegistryClient(plain_http=hosts) as client:
            return await convert_async(client, source, target, options, progress)

    return trio.run(main)
