"""Small, deterministic OCI images for tests, the demo and benchmarks.

Layers are built from an in-memory tree (path → bytes, ``File``, ``Symlink`` or ``Directory``)
or from a directory on disk, as tar.gz with fixed timestamps (2000-01-01, as the 2DFS builder
uses), owner 0:0 and sorted entries, so the same tree always gives the same digests. The
config names this host's platform and lists the layers' diff IDs; the manifest is OCI, and can
be wrapped in an OCI index. ``push_image`` uploads everything with the registry client.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.estargz import Compression, WriterOptions, write_blob_from_tar
from lazy2dfs.progress import Progress
from lazy2dfs.registry_client import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    CredentialStore,
    Descriptor,
    DescriptorPlatform,
    ImageIndex,
    ImageManifest,
    Platform,
    Reference,
    RegistryClient,
    host_platform,
    parse_reference,
    sha256_digest,
)
from lazy2dfs.tdfs import (
    FIELD_MEDIA_TYPE,
    Allotment,
    BuildRequest,
    BuildResult,
    EncodeOptions,
    Field,
    build,
)

FIXED_MTIME: Final = 946684800  # 2000-01-01T00:00:00Z
_CREATED: Final = "2000-01-01T00:00:00Z"


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Directory:
    mode: int = 0o755


Entry = bytes | File | Symlink | Directory
Tree = Mapping[str, Entry]


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes
    annotations: Mapping[str, str] | None = None

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self, platform: Platform | None = None) -> Descriptor:
        return Descriptor(
            mediaType=self.media_type,
            digest=self.digest,
            size=len(self.data),
            annotations=dict(self.annotations) if self.annotations else None,
            platform=None
            if platform is None
            else DescriptorPlatform(
                os=platform.os,
                architecture=platform.architecture,
                variant=platform.variant or None,
            ),
        )


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar


@dataclass(frozen=True)
class BuiltImage:
    config: Blob
    layers: tuple[Layer, ...]
    manifest: Blob
    platform: Platform
    index: Blob | None = None
    extra: tuple[Blob, ...] = field(default=())

    @property
    def root(self) -> Blob:
        """What a tag should name: the index if there is one, else the manifest."""
        return self.index or self.manifest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *(layer.blob for layer in self.layers), *self.extra)


def tree_from_directory(root: Path) -> dict[str, Entry]:
    """The regular files, symlinks and directories under ``root``, with their modes."""
    tree: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            relative = path.relative_to(root).as_posix()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                tree[relative] = Symlink(os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                tree[relative] = Directory(mode)
            elif stat.S_ISREG(info.st_mode):
                tree[relative] = File(path.read_bytes(), mode)
            else:
                raise InvalidArgumentError(f"{path}: only files, links and directories")
    return tree


def build_layer(
    tree: Tree | Path,
    annotations: Mapping[str, str] | None = None,
    estargz: WriterOptions | None = None,
) -> Layer:
    """A tar.gz layer of ``tree``; missing parent directories are added (0755). With
    ``estargz`` options the layer is eStargz (or zstd:chunked, as their compression says),
    annotated with its TOC digest."""
    entries = dict(tree_from_directory(tree) if isinstance(tree, Path) else tree)
    normalized: dict[str, Entry] = {}
    for name, entry in entries.items():
        clean = PurePosixPath("/", name).as_posix().lstrip("/")
        if not clean or ".." in PurePosixPath(clean).parts:
            raise InvalidArgumentError(f"layer path {name!r} is empty or escapes the root")
        for parent in PurePosixPath(clean).parents:
            if parent.as_posix() != ".":
                normalized.setdefault(parent.as_posix(), Directory())
        normalized[clean] = entry
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(normalized):
            _add(archive, name, normalized[name])
    tar_bytes = raw.getvalue()
    if estargz is not None:
        out = io.BytesIO()
        result = write_blob_from_tar(io.BytesIO(tar_bytes), out, estargz)
        merged = {**result.annotations, **(annotations or {})}
        zstd = estargz.compression is Compression.ZSTD
        media_type = OCI_LAYER_ZSTD if zstd else OCI_LAYER_GZIP
        return Layer(Blob(media_type, out.getvalue(), merged), result.diff_id)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as stream:
        stream.write(tar_bytes)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    return Layer(Blob(OCI_LAYER_GZIP, compressed.getvalue(), annotations), diff_id)


def _add(archive: tarfile.TarFile, name: str, entry: Entry) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    data: bytes | None = None
    if isinstance(entry, Directory):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
    elif isinstance(entry, Symlink):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.target
    else:
        file = entry if isinstance(entry, File) else File(entry)
        info.type, info.mode, info.size = tarfile.REGTYPE, file.mode, len(file.data)
        data = file.data
    archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(
    layers: Sequence[Tree | Path | Layer],
    *,
    platform: Platform | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Sequence[Blob] = (),
    annotations: Mapping[str, str] | None = None,
    in_index: bool = False,
) -> BuiltImage:
    """An image of ``layers`` for ``platform`` (default: this host).

    ``config`` is the OCI config's ``config`` section (``Entrypoint``, ``Cmd``, ``Env`` …).
    ``extra`` blobs are listed in the manifest after the layers but not in ``rootfs.diff_ids``
    (this is where a 2DFS field descriptor goes). ``in_index`` wraps the manifest in an OCI
    index whose entry names the platform, as multi-platform images and 2DFS images are.
    """
    target = platform or host_platform()
    built = tuple(layer if isinstance(layer, Layer) else build_layer(layer) for layer in layers)
    image_config: dict[str, Any] = {
        "architecture": target.architecture,
        "os": target.os,
        "created": _CREATED,
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
    }
    if target.variant:
        image_config["variant"] = target.variant
    config_blob = Blob(OCI_CONFIG, _json(image_config))
    manifest = ImageManifest(
        mediaType=OCI_MANIFEST,
        config=config_blob.descriptor(),
        layers=tuple(
            [layer.blob.descriptor() for layer in built] + [blob.descriptor() for blob in extra]
        ),
        annotations=dict(annotations) if annotations else None,
    )
    manifest_blob = Blob(OCI_MANIFEST, manifest.to_json())
    index_blob = None
    if in_index:
        index = ImageIndex(
            mediaType=OCI_INDEX,
            manifests=(manifest_blob.descriptor(target),),
            annotations=dict(annotations) if annotations else None,
        )
        index_blob = Blob(OCI_INDEX, index.to_json())
    return BuiltImage(config_blob, built, manifest_blob, target, index_blob, tuple(extra))


async def push_image(client: RegistryClient, ref: Reference | str, image: BuiltImage) -> Descriptor:
    """Uploads blobs, then the manifest, then the index; the tag names the root."""
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    for blob in image.blobs:
        await client.push_blob(reference, blob.digest, blob.data)
    if image.index is None:
        return await client.push_manifest(reference, image.manifest.data, OCI_MANIFEST)
    by_digest = Reference(reference.registry, reference.repository, None, image.manifest.digest)
    await client.push_manifest(by_digest, image.manifest.data, OCI_MANIFEST)
    return await client.push_manifest(reference, image.index.data, OCI_INDEX)


@dataclass(frozen=True)
class Stock2dfsImage:
    """A 2DFS image as the stock (Go) builder lays it out: plain tar.gz allotments, one per
    row in column 0, and a field without sizes or TOC digests."""

    image: BuiltImage  # the base layers and the field descriptor, in an index
    allotments: tuple[Layer, ...]  # row by row


def stock_2dfs_image(base: Sequence[Tree | Layer], rows: Sequence[Tree]) -> Stock2dfsImage:
    allotments = tuple(build_layer(tree) for tree in rows)
    grid = Field.from_allotments(
        Allotment(row, 0, layer.blob.digest[7:], layer.diff_id[7:])
        for row, layer in enumerate(allotments)
    )
    image = build_image(base, extra=[Blob(FIELD_MEDIA_TYPE, grid.to_json())], in_index=True)
    return Stock2dfsImage(image, allotments)


async def push_stock_2dfs_image(
    client: RegistryClient, ref: Reference | str, stock: Stock2dfsImage
) -> Descriptor:
    """The allotment blobs (referenced only from the field), then the image."""
    for layer in stock.allotments:
        await client.push_blob(ref, layer.blob.digest, layer.blob.data)
    return await push_image(client, ref, stock.image)


def build_2dfs_image(
    work: Path, base: str, target: str, rows: Sequence[Mapping[str, bytes]], chunk_size: int
) -> BuildResult:
    """``lazy2dfs build --push`` (zstd:chunked allotments) of ``base`` plus one allotment per row
    in column 0, holding that row's files (path in the image → bytes); sources go to
    ``work``."""
    allotments = []
    for row, files in enumerate(rows):
        sources = []
        for number, data in enumerate(files.values()):
            (work / f"row{row}-{number}").write_bytes(data)
            sources.append(f"row{row}-{number}")
        destinations = [f"/{path}" for path in files]
        allotments.append({"src": sources, "dst": destinations, "row": row, "col": 0})
    (work / "2dfs.json").write_text(json.dumps({"allotments": allotments}))
    request = BuildRequest(
        spec=work / "2dfs.json",
        base=base,
        target=target,
        push=True,
        plain_http=True,
        cache_root=work / "cache",
        encode=EncodeOptions(chunk_size=chunk_size),
    )
    return build(request, progress=Progress(quiet=True), credentials=CredentialStore())
