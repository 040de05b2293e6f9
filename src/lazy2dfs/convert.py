"""``lazy2dfs convert``: rewrite a whole image in a registry as eStargz (or zstd:chunked).

Every platform manifest is converted (an index stays an index); each tar layer is downloaded,
decompressed once (which also checks the config's diff ID for it), rewritten by the eStargz
writer on every core, checked by reading its TOC back, and pushed unless the registry already
has that digest. The writer is deterministic, so a second run makes the same blobs and pushes
nothing new.

The eStargz tar is not the source tar: it gains a landmark entry and ``stargz.index.json``, and
its headers are rebuilt. The diff IDs therefore always change and the config is rewritten with
the new ones (containerd verifies an unpacked layer against them). Docker schema 2 input becomes
OCI output, because only OCI descriptors carry the annotations (TOC digest) a lazy pull needs.

The rewriting of manifests, configs and indexes is pure (bytes in, bytes out) so that it can be
tested without a registry; :func:`convert` does the I/O.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol, TextIO

import trio
import zstandard

from lazy2dfs.errors import IntegrityError, InvalidArgumentError
from lazy2dfs.estargz import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    Compression,
    WriteResult,
    WriterOptions,
    open_blob,
    write_blob_from_tar,
)
from lazy2dfs.estargz.writer import DEFAULT_CHUNK_SIZE
from lazy2dfs.estargz.zstdchunked import (
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
)
from lazy2dfs.registry_client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BlobNotFoundError,
    ManifestNotFoundError,
    Reference,
    RegistryClient,
    parse_reference,
    sha256_digest,
)

OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP: Final = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
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
_MEDIA_TYPE_RENAMES: Final = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_FOREIGN_LAYER: OCI_LAYER_NONDISTRIBUTABLE_GZIP,
}
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_COPY_BLOCK: Final = 1 << 20


class ConfigMismatchError(IntegrityError):
    """A layer's uncompressed digest is not among the config's diff IDs: the source image is
    inconsistent, and converting it would publish an image containerd refuses to unpack."""


class UnsupportedImageError(InvalidArgumentError):
    """The source is not something convert can rewrite (not an image, or a layer it cannot
    decompress)."""


@dataclass(frozen=True)
class ConvertOptions:
    """``zstd`` writes zstd:chunked instead of eStargz (gzip); ``workers`` compress in
    parallel (default: every core); ``level`` as in :class:`WriterOptions`."""

    zstd: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    level: int | None = None

    @property
    def compression(self) -> Compression:
        return Compression.ZSTD if self.zstd else Compression.GZIP

    @property
    def media_type(self) -> str:
        return OCI_LAYER_ZSTD if self.zstd else OCI_LAYER_GZIP

    def writer_options(self) -> WriterOptions:
        return WriterOptions(
            chunk_size=self.chunk_size,
            compression=self.compression,
            level=self.level,
            workers=self.workers,
        )


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


# -- pure rewriting ----------------------------------------------------------------------------


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsupportedImageError(f"{what} is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise UnsupportedImageError(f"{what} is not a JSON object")
    return document


def _dump(document: Mapping[str, Any]) -> bytes:
    """Compact JSON in the document's own key order, so that unknown fields survive."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def oci_media_type(media_type: str) -> str:
    """The OCI media type for a Docker one; OCI and unknown types are returned unchanged."""
    return _MEDIA_TYPE_RENAMES.get(media_type, media_type)


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
    config = _load(data, "image config")
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
    manifest = _load(data, "manifest")
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
    index = _load(data, "index")
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


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """Progress on stderr, plain text. On a terminal one line is redrawn with ``\\r`` (at most
    ten times a second); otherwise (CI logs, captured output) each step is one line and byte
    counts are not repeated, so logs stay short. Safe to call from worker threads."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._label = ""
        self._last = 0.0
        self._width = 0

    def step(self, label: str) -> None:
        with self._lock:
            self._label = label
            if self._tty:
                self._draw(label)
            else:
                print(label, file=self._stream, flush=True)

    def update(self, done: int, total: int) -> None:
        if not self._tty:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < 0.1 and done < total:
                return
            self._last = now
            percent = 100 * done // total if total else 100
            self._draw(f"{self._label} {percent:3d}% {_mib(done)}/{_mib(total)} MiB")

    def done(self, summary: str) -> None:
        with self._lock:
            if self._tty:
                self._draw(summary)
                self._stream.write("\n")
                self._width = 0
            else:
                print(summary, file=self._stream)
            self._stream.flush()

    def _draw(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._width = len(text)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f}"


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _CountingReader:
    """A read-only file wrapper that reports how far the reader got (for the progress line)."""

    def __init__(self, raw: IO[bytes], report: Callable[[int], None]) -> None:
        self._raw = raw
        self._report = report
        self._seen = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._seen = max(self._seen, self._raw.tell())
        self._report(self._seen)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


# -- one layer ---------------------------------------------------------------------------------


def decompress_layer(source: Path, tar_path: Path, report: Callable[[int], None]) -> str:
    """Writes the plain tar of ``source`` (gzip, zstd, or already plain) to ``tar_path`` and
    returns its diff ID. Detection is by magic bytes, not media type: registries and tools
    mislabel. Multi-member gzip (eStargz) and multi-frame zstd (zstd:chunked) both work."""
    digest = hashlib.sha256()
    with source.open("rb") as raw, tar_path.open("wb") as out:
        magic = raw.read(4)
        raw.seek(0)
        stream: _Readable
        if magic.startswith(_GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic == _ZSTD_MAGIC:
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            stream = raw
        try:
            while block := stream.read(_COPY_BLOCK):
                digest.update(block)
                out.write(block)
                report(raw.tell())
        except (OSError, EOFError, zstandard.ZstdError) as err:
            raise UnsupportedImageError(f"cannot decompress layer: {err}") from None
    return "sha256:" + digest.hexdigest()


def convert_layer_file(
    tar_path: Path, out_path: Path, options: ConvertOptions, report: Callable[[int], None]
) -> WriteResult:
    """Writes the blob for a plain tar and reads its TOC back: a writer bug must not reach a
    registry, and reading two ranges of a local file costs nothing next to compressing it."""
    with tar_path.open("rb") as raw, out_path.open("wb") as out:
        result = write_blob_from_tar(
            _CountingReader(raw, report),  # type: ignore[arg-type]
            out,
            options.writer_options(),
        )
    with out_path.open("rb") as blob:

        def read_range(offset: int, length: int) -> bytes:
            blob.seek(offset)
            return blob.read(length)

        open_blob(read_range, result.blob_size, expected_toc_digest=result.toc_digest)
    return result


# -- the run -----------------------------------------------------------------------------------


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
        if "manifests" in _load(root.data, "root manifest"):
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
        index = _load(data, "index")
        converted: dict[str, tuple[str, int]] = {}
        for entry in index.get("manifests") or []:
            if not isinstance(entry, dict) or is_attestation(entry):
                continue
            digest = str(entry.get("digest"))
            child = await self.client.get_manifest(self.src, digest)
            if "manifests" in _load(child.data, "nested index"):
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
        manifest = _load(data, f"manifest {digest}")
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
        pushed = await self.client.push_blob(self.dst, digest, data, mount_from=mount_from)
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
            self.progress.step(f"{short}: download {_mib(size)} MiB")
            await self.client.download_blob(self.src, digest, compressed)
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
            self.progress.step(f"{short}: push {_mib(result.blob_size)} MiB")
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
    options: ConvertOptions = ConvertOptions(),
    progress: Progress | None = None,
) -> ConvertResult:
    """Converts ``src`` (index or manifest) and pushes the result under ``dst``'s tag."""
    source = src if isinstance(src, Reference) else parse_reference(src)
    target = dst if isinstance(dst, Reference) else parse_reference(dst)
    if target.tag is None or target.digest is not None:
        raise InvalidArgumentError(f"{target}: the destination needs a tag and no digest")
    with tempfile.TemporaryDirectory(prefix="lazy2dfs-convert-") as workdir:
        run = _Run(client, source, target, options, progress or Progress(), Path(workdir))
        return await run.run()


def convert(
    src: str,
    dst: str,
    options: ConvertOptions = ConvertOptions(),
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


# -- command line ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _run_cli(args: argparse.Namespace) -> int:
    options = ConvertOptions(zstd=args.zstd, chunk_size=args.chunk_size, workers=args.workers)
    result = convert(args.src, args.dst, options, plain_http=args.plain_http)
    fmt = "zstd:chunked" if args.zstd else "eStargz"
    print(
        f"{args.dst}@{result.root_digest}: {len(result.layers)} layers as {fmt};"
        f" blobs {result.blobs_pushed} pushed, {result.blobs_present} already present;"
        f" manifests {result.manifests_pushed} pushed, {result.manifests_present} unchanged"
        + (f"; {len(result.dropped)} attestation manifests dropped" if result.dropped else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``convert`` to the ``lazy2dfs`` command line."""
    command = subparsers.add_parser(
        "convert",
        help="convert an image in a registry to eStargz (or zstd:chunked) for lazy pulls",
        description="Converts every platform of SRC_REF and pushes it as DST_REF (OCI media"
        " types and annotations; the config's diff IDs updated). Layers the registry already"
        " has are not pushed again, so re-running is cheap.",
    )
    command.add_argument("src", metavar="SRC_REF", help="image to convert")
    command.add_argument("dst", metavar="DST_REF", help="where to push the result (with a tag)")
    command.add_argument(
        "--plain-http", action="store_true", help="reach both registries over HTTP (not TLS)"
    )
    command.add_argument("--zstd", action="store_true", help="write zstd:chunked, not eStargz")
    command.add_argument(
        "--chunk-size",
        type=_positive,
        default=DEFAULT_CHUNK_SIZE,
        metavar="N",
        help=f"bytes per chunk of a large file (default {DEFAULT_CHUNK_SIZE})",
    )
    command.add_argument(
        "--workers",
        type=_positive,
        default=os.cpu_count() or 1,
        help="compression threads (default: every core)",
    )
    command.set_defaults(func=_run_cli)
