"""The same weights as a 2DFS image both ways, for benchmarks that compare them: eStargz
allotments as ``lazy2dfs build`` makes them, and tar.gz allotments in a stock field with the
partition images the 2DFS registry would serve for it (2DFS without lazy loading)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio

from devstack.images import Blob, build_image, build_layer, push_image
from devstack.model import runtime_tree
from devstack.registry import LocalRegistry
from lazy2dfs.progress import Progress
from lazy2dfs.registry_client import (
    OCI_MANIFEST,
    ImageManifest,
    Partition,
    RegistryClient,
    parse_manifest,
)
from lazy2dfs.tdfs import FIELD_MEDIA_TYPE, Allotment, BuildRequest, Field, build, partition_image
from lazy2dfs.tdfs.encode import EncodeOptions

Allotments = tuple[tuple[str, int], ...]  # (blob digest, size) per row, row 0 first


def push_2dfs(
    registry: LocalRegistry,
    source: Path,
    base: str,
    weights: Mapping[str, bytes],
    files: Sequence[str],
    tag: str,
    cache_root: Path,
    encode: EncodeOptions | None = None,
) -> Allotments:
    """Builds and pushes ``registry``/``tag`` on ``base`` with file ``files[r]`` in row ``r``
    (its bytes from ``weights``), staging them under ``source``, allotments written as
    ``encode`` says (default: ``lazy2dfs build``'s); returns its allotments."""
    source.mkdir(parents=True)
    spec = []
    for row, path in enumerate(files):
        (source / f"row{row}").write_bytes(weights[path])
        spec.append({"src": f"row{row}", "dst": f"/{path}", "row": row, "col": 0})
    (source / "2dfs.json").write_text(json.dumps({"allotments": spec}))
    built = build(
        BuildRequest(
            spec=source / "2dfs.json",
            base=base,
            target=f"{registry.host}/{tag}",
            push=True,
            plain_http=True,
            cache_root=cache_root,
            encode=encode or EncodeOptions(),
        ),
        progress=Progress(quiet=True),
    )
    shutil.rmtree(source)
    ordered = sorted(built.allotments, key=lambda a: a.row)
    return tuple((a.blob.digest, a.blob.size) for a in ordered)


def push_stock(
    registry: LocalRegistry,
    weights: Mapping[str, bytes],
    files: Sequence[str],
    whole_tag: str,
    partitions: Mapping[str, Sequence[Partition]],
) -> tuple[Allotments, int]:
    """The tar.gz image of every row (``whole_tag``) and, under each tag of ``partitions``,
    the image the 2DFS registry serves for those partitions of a stock field; returns the
    tar.gz allotments and the size of the base layer."""
    base = build_layer(runtime_tree())
    # zlib lets go of the GIL: two threads compress two files at once.
    with ThreadPoolExecutor(2) as pool:
        allotments = list(pool.map(lambda path: build_layer({path: weights[path]}), files))
    field = Field.from_allotments(
        Allotment(row, 0, layer.blob.digest[7:], layer.diff_id[7:])
        for row, layer in enumerate(allotments)
    )
    stock = build_image([base], extra=[Blob(FIELD_MEDIA_TYPE, field.to_json())])
    manifest = parse_manifest(stock.manifest.data, OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    sizes = {layer.blob.digest: len(layer.blob.data) for layer in allotments}
    parts = {
        tag: partition_image(manifest, stock.config.data, field, list(selected), sizes)
        for tag, selected in partitions.items()
    }

    async def upload() -> None:
        async with RegistryClient(plain_http=True) as client:
            whole = build_image([base, *allotments])
            await push_image(client, f"{registry.host}/{whole_tag}", whole)
            for tag, part in parts.items():
                ref = f"{registry.host}/{tag}"
                await client.push_blob(ref, part.config_digest, part.config)
                await client.push_manifest(ref, part.manifest, OCI_MANIFEST)

    trio.run(upload)
    return tuple((a.blob.digest, len(a.blob.data)) for a in allotments), len(base.blob.data)
