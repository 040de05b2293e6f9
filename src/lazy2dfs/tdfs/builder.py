"""``lazy2dfs build``: a base image plus a ``2dfs.json`` → a 2DFS image, pushed or exported.

Steps, each failing before the next starts: read and check the build file; resolve the base
image (manifests and configs only, its layers are never downloaded for a push); encode the
allotments as eStargz in worker threads (one ``jobs`` limiter, each writer compressing on
``workers`` threads) or find them in the cache; lay out the field, manifests and index; then
push what the target lacks and/or write an OCI layout tar.

Base blobs reach the target without passing through this machine when the base lives on the
same registry (a cross-repository mount); otherwise, and when the registry refuses the mount,
they are downloaded into the cache and uploaded. Every upload is skipped when the target has
the blob already, so a rebuild that changed one allotment uploads one blob (plus the field,
manifests and index).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from lazy2dfs.progress import Progress, human_bytes
from lazy2dfs.registry_client import (
    OCI_INDEX,
    OCI_MANIFEST,
    BlobNotFoundError,
    CredentialStore,
    Descriptor,
    DescriptorPlatform,
    DigestMismatchError,
    ImageIndex,
    ImageManifest,
    InvalidReferenceError,
    MalformedManifestError,
    Platform,
    PlatformNotFoundError,
    Reference,
    RegistryClient,
    RegistryProtocolError,
    parse_reference,
    select_platform,
    sha256_digest,
)
from lazy2dfs.registry_client.manifest import MANIFEST_TYPES
from lazy2dfs.tdfs.cache import AllotmentCache, default_cache_root
from lazy2dfs.tdfs.compose import BaseManifest, ComposedImage, compose_image
from lazy2dfs.tdfs.encode import EncodedAllotment, EncodeOptions, encode_allotment
from lazy2dfs.tdfs.errors import ImageConfigError
from lazy2dfs.tdfs.field import Field
from lazy2dfs.tdfs.layout import write_oci_layout
from lazy2dfs.tdfs.spec import AllotmentSpec, load_spec

# Buildkit marks provenance/SBOM manifests in an index with this annotation; they are not images.
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
_PUSH_CONCURRENCY = 4


@dataclass(frozen=True)
class BuildRequest:
    spec: Path
    base: str
    target: str
    platforms: tuple[Platform, ...] = ()
    push: bool = False
    as_tar: Path | None = None
    plain_http: bool = False
    cache_root: Path = field(default_factory=default_cache_root)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    jobs: int = 2


@dataclass(frozen=True)
class BuildResult:
    reference: Reference  # the target, pinned to the index digest
    image: ComposedImage
    field: bytes
    allotments: tuple[EncodedAllotment, ...]
    uploaded: tuple[str, ...]  # digests of blobs sent or mounted by the push


@dataclass(frozen=True)
class _Base:
    reference: Reference
    manifest: BaseManifest
    parsed: ImageManifest


def build(
    request: BuildRequest,
    *,
    progress: Progress | None = None,
    credentials: CredentialStore | None = None,
) -> BuildResult:
    """Runs a whole build; blocking (it starts its own trio run)."""
    spec = load_spec(request.spec)
    base = _reference(request.base, "base")
    target = _reference(request.target, "target")
    if target.tag is None:
        raise InvalidReferenceError(f"target {request.target!r} needs a tag")
    report = progress or Progress()

    async def main() -> BuildResult:
        async with RegistryClient(plain_http=request.plain_http, credentials=credentials) as c:
            return await _Build(request, c, AllotmentCache(request.cache_root), report).run(
                spec.allotments, base, target
            )

    return trio.run(main)


def _reference(text: str, what: str) -> Reference:
    reference = parse_reference(text)
    if reference.partitions:
        raise InvalidReferenceError(f"{what} {text!r}: a partition suffix makes no sense here")
    return reference


class _Build:
    def __init__(
        self,
        request: BuildRequest,
        client: RegistryClient,
        cache: AllotmentCache,
        progress: Progress,
    ) -> None:
        self._request = request
        self._client = client
        self._cache = cache
        self._progress = progress
        self._say = progress.step
        self._uploaded: list[str] = []

    async def run(
        self, allotments: Sequence[AllotmentSpec], base: Reference, target: Reference
    ) -> BuildResult:
        bases, index_annotations = await self._resolve_base(base)
        encoded = await self._encode(allotments)
        the_field = Field.from_allotments(e.field_allotment() for e in encoded)
        field_bytes = the_field.to_json()
        self._say(
            f"field: {the_field.row_count} rows x {the_field.col_count} columns, "
            f"{len(encoded)} allotments"
        )
        name = str(Reference(target.registry, target.repository, target.tag))
        image = compose_image([b.manifest for b in bases], field_bytes, name, index_annotations)
        if self._request.push:
            await self._push(target, bases, encoded, field_bytes, image)
        if self._request.as_tar is not None:
            await self._export(self._request.as_tar, target, bases, encoded, field_bytes, image)
        if not self._request.push and self._request.as_tar is None:
            self._say("built (neither --push nor --as-tar given: nothing published)")
        return BuildResult(
            target.with_digest(image.index_digest),
            image,
            field_bytes,
            tuple(encoded),
            tuple(self._uploaded),
        )

    # -- base ---------------------------------------------------------------------------------

    async def _resolve_base(self, base: Reference) -> tuple[list[_Base], dict[str, str]]:
        root = await self._client.get_manifest(base)
        pinned = base.with_digest(root.descriptor.digest)
        if isinstance(root.manifest, ImageIndex):
            entries = self._index_entries(root.manifest)
            annotations = dict(root.manifest.annotations or {})
        else:
            entries = [await self._single_entry(pinned, root.descriptor, root.manifest)]
            annotations = {}
        bases = []
        for entry in entries:
            fetched = await self._client.get_manifest(pinned, entry.digest)
            if not isinstance(fetched.manifest, ImageManifest):
                raise MalformedManifestError(f"base {base}: {entry.digest} is not a manifest")
            bases.append(_Base(pinned, BaseManifest(fetched.data, entry), fetched.manifest))
        names = ", ".join(_platform_name(b.manifest.entry) for b in bases)
        self._say(f"base {base}: {len(bases)} platform(s): {names}")
        return bases, annotations

    def _index_entries(self, index: ImageIndex) -> list[Descriptor]:
        if self._request.platforms:
            chosen = [select_platform(index, p) for p in self._request.platforms]
            return list({entry.digest: entry for entry in chosen}.values())
        entries = [
            entry
            for entry in index.manifests
            if entry.media_type in MANIFEST_TYPES
            and _ATTESTATION_ANNOTATION not in (entry.annotations or {})
        ]
        if not entries:
            raise PlatformNotFoundError("base index lists no image manifest")
        return entries

    async def _single_entry(
        self, base: Reference, descriptor: Descriptor, manifest: ImageManifest
    ) -> Descriptor:
        """An index entry for a base that is a bare manifest; its platform is in its config."""
        try:
            config = json.loads(await self._client.get_blob(base, manifest.config.digest))
        except (ValueError, RecursionError) as exc:
            raise ImageConfigError(f"base {base}: config is not JSON: {exc!r}") from exc
        if not isinstance(config, dict):
            raise ImageConfigError(f"base {base}: config is not a JSON object")
        platform = DescriptorPlatform(
            os=config.get("os", ""),
            architecture=config.get("architecture", ""),
            variant=config.get("variant") or None,
        )
        wanted = self._request.platforms
        if wanted and not any(p.matches(platform.to_platform()) for p in wanted):
            raise PlatformNotFoundError(
                f"base {base} is {platform.to_platform()}, not {', '.join(map(str, wanted))}"
            )
        return descriptor.model_copy(update={"platform": platform})

    # -- allotments ---------------------------------------------------------------------------

    async def _encode(self, allotments: Sequence[AllotmentSpec]) -> list[EncodedAllotment]:
        limiter = trio.CapacityLimiter(max(1, self._request.jobs))
        results: dict[int, EncodedAllotment] = {}
        total = len(allotments)

        async def one(position: int, spec: AllotmentSpec) -> None:
            async with limiter:
                started = time.monotonic()
                size = sum(f.src.stat().st_size for f in spec.files)
                label = f"allotment {position + 1}/{total} row {spec.row} col {spec.col}"
                self._say(f"{label}: {len(spec.files)} file(s), {human_bytes(size)}")
                done = await trio.to_thread.run_sync(
                    encode_allotment,
                    spec,
                    self._cache,
                    self._request.encode,
                    lambda n, total: self._progress.update(n, total, f"{label}: encode"),
                )
                how = "cached" if done.cached else f"encoded in {time.monotonic() - started:.1f}s"
                self._say(
                    f"{label}: {done.blob.digest[:19]}… {human_bytes(done.blob.size)} ({how})"
                )
                results[position] = done

        async with trio.open_nursery() as nursery:
            for position, spec in enumerate(allotments):
                nursery.start_soon(one, position, spec)
        return [results[i] for i in range(total)]

    # -- push ---------------------------------------------------------------------------------

    async def _push(
        self,
        target: Reference,
        bases: Sequence[_Base],
        encoded: Sequence[EncodedAllotment],
        field_bytes: bytes,
        image: ComposedImage,
    ) -> None:
        limiter = trio.CapacityLimiter(_PUSH_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for digest, base in _base_blobs(bases).items():
                nursery.start_soon(self._push_base_blob, limiter, target, base, digest)
            for allotment in encoded:
                path = self._cache.blobs.path(allotment.blob.digest)
                nursery.start_soon(self._push_blob, limiter, target, allotment.blob.digest, path)
            field_digest = sha256_digest(field_bytes)
            nursery.start_soon(self._push_blob, limiter, target, field_digest, field_bytes)
        for data in image.manifests:
            pinned = Reference(target.registry, target.repository, None, sha256_digest(data))
            await self._client.push_manifest(pinned, data, OCI_MANIFEST)
        await self._client.push_manifest(target, image.index, OCI_INDEX)
        self._say(f"pushed {target}@{image.index_digest}")

    async def _push_blob(
        self, limiter: trio.CapacityLimiter, target: Reference, digest: str, data: bytes | Path
    ) -> None:
        async with limiter:
            sent = await self._client.push_blob(
                target, digest, data, progress=self._progress_of(digest, data)
            )
        self._record(digest, "uploaded" if sent else "present")

    def _progress_of(self, digest: str, data: bytes | Path) -> Callable[[int], None]:
        """Reports one blob's upload as a transfer of its own: several go at once."""
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        return lambda sent: self._progress.update(sent, size, f"push {digest[7:19]}")

    async def _push_base_blob(
        self, limiter: trio.CapacityLimiter, target: Reference, base: Reference, digest: str
    ) -> None:
        async with limiter:
            try:
                await self._client.stat_blob(target, digest)
                self._say(f"blob {digest[:19]}… present")
                return
            except BlobNotFoundError:
                pass
            if base.registry == target.registry:
                try:
                    # Mounted blobs send no bytes; a registry that refuses the mount gets the
                    # empty body, rejects its digest, and the blob is copied below instead.
                    await self._client.push_blob(target, digest, b"", mount_from=base.repository)
                    self._record(digest, "mounted")
                    return
                except (DigestMismatchError, RegistryProtocolError):
                    self._say(f"blob {digest[:19]}… cannot be mounted, copying")
            path = await self._fetch_base_blob(base, digest)
            await self._client.push_blob(
                target, digest, path, progress=self._progress_of(digest, path)
            )
        self._record(digest, "uploaded")

    def _record(self, digest: str, how: str) -> None:
        if how != "present":
            self._uploaded.append(digest)
        self._say(f"blob {digest[:19]}… {how}")

    async def _fetch_base_blob(self, base: Reference, digest: str) -> Path:
        """The base blob in the cache's blob store, downloaded (and verified) when missing."""
        path = self._cache.blobs.path(digest)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            total = await self._client.stat_blob(base, digest)
            size = await self._client.download_blob(
                base,
                digest,
                path,
                lambda n: self._progress.update(n, total, f"download {digest[7:19]}"),
            )
            self._say(f"blob {digest[:19]}… downloaded {human_bytes(size)}")
        return path

    # -- export -------------------------------------------------------------------------------

    async def _export(
        self,
        out: Path,
        target: Reference,
        bases: Sequence[_Base],
        encoded: Sequence[EncodedAllotment],
        field_bytes: bytes,
        image: ComposedImage,
    ) -> None:
        blobs: dict[str, bytes | Path] = {}
        for digest, base in _base_blobs(bases).items():
            blobs[digest] = await self._fetch_base_blob(base, digest)
        for allotment in encoded:
            blobs[allotment.blob.digest] = self._cache.blobs.path(allotment.blob.digest)
        blobs[sha256_digest(field_bytes)] = field_bytes
        for data in image.manifests:
            blobs[sha256_digest(data)] = data
        await trio.to_thread.run_sync(write_oci_layout, out, target, image.index, blobs)
        self._say(f"wrote OCI layout {out} ({len(blobs) + 1} blobs)")


def _base_blobs(bases: Sequence[_Base]) -> dict[str, Reference]:
    """Config and layer digests of every base platform, and where to fetch them."""
    blobs: dict[str, Reference] = {}
    for base in bases:
        for descriptor in (base.parsed.config, *base.parsed.layers):
            blobs.setdefault(descriptor.digest, base.reference)
    return blobs


def _platform_name(entry: Descriptor) -> str:
    return str(entry.platform.to_platform()) if entry.platform else "unknown"
