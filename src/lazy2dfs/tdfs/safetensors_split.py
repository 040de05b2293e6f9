"""``lazy2dfs field from-safetensors``: cut a model into row groups of consecutive layers.

A pipeline stage (or an edge device in split computing) needs the weights of some consecutive
transformer blocks. This reads the tensors of one model (several files are shards of it),
groups them by the layer index in their names (``model.layers.12.…``, ``transformer.h.3.…``,
``blocks.7.…``, ``encoder.layer.5.…``) into ``rows`` groups of consecutive layers, sizes as
even as possible, and writes one safetensors file per group plus a ``2dfs.json`` placing group
``r`` at row ``r``, column 0. Tensors outside the blocks go with the stage that uses them:
embeddings to the first row, everything else (final norm, LM head, classifier) to the last.

It also writes ``model.safetensors.index.json``, the index Hugging Face loaders read for a
sharded checkpoint (``weight_map``: tensor name → shard file; ``metadata.total_size``: bytes of
all tensors), and puts it in every row's allotment: any partition then carries the index, and
a stage finds where its tensors are. The index changes only when tensor names or sizes do, so
new weights in one row still leave the other allotments' digests alone.

The safetensors format is small enough to write here: an 8-byte little-endian header length,
a JSON header (``{name: {dtype, shape, data_offsets}}`` and optional ``__metadata__``), padded
with spaces to 8 bytes, then the tensors' bytes back to back. Tensors are ordered by element
size, largest first, then by name, as the reference library does, so every tensor stays
aligned to its element size. Data is copied, never parsed.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from lazy2dfs.tdfs.errors import SafetensorsFormatError
from lazy2dfs.tdfs.spec import AllotmentSpec, FileCopy, dump_spec

SPEC_NAME: Final = "2dfs.json"
INDEX_NAME: Final = "model.safetensors.index.json"
_MAX_HEADER: Final = 100 * 1024 * 1024  # the reference library's limit
_COPY_SIZE: Final = 8 << 20
# Bits per element; F4 and F6 types pack several elements in a byte.
_DTYPE_BITS: Final = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
_LAYER: Final = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_EMBEDDING: Final = re.compile(
    r"embed|(?:^|\.)(?:wte|wpe|cls_token|pos_drop|mask_token)(?:\.|$)", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Path
    offset: int  # absolute, in the source file
    length: int

    @property
    def element_bits(self) -> int:
        return _DTYPE_BITS.get(self.dtype, 8)


@dataclass(frozen=True, slots=True)
class RowGroup:
    row: int
    layers: tuple[int, ...]
    path: Path
    tensors: int
    size: int


@dataclass(frozen=True, slots=True)
class SplitResult:
    spec: Path
    rows: tuple[RowGroup, ...]
    index: Path


def split_safetensors(
    models: Sequence[Path], rows: int, out: Path, dst_dir: str = "/model"
) -> SplitResult:
    """Writes ``rows`` safetensors files, their index and a ``2dfs.json`` to ``out``."""
    if rows < 1:
        raise SafetensorsFormatError(f"--rows must be at least 1, got {rows}")
    if not models:
        raise SafetensorsFormatError("no .safetensors file given")
    metadata: dict[str, str] | None = None
    tensors: dict[str, _Tensor] = {}
    for model in models:
        file_metadata, file_tensors = read_header(model)
        metadata = metadata if metadata is not None else file_metadata
        for tensor in file_tensors:
            if tensor.name in tensors:
                raise SafetensorsFormatError(
                    f"tensor {tensor.name!r} is in both {tensors[tensor.name].source} "
                    f"and {tensor.source}"
                )
            tensors[tensor.name] = tensor
    groups = _group(list(tensors.values()), rows)
    out.mkdir(parents=True, exist_ok=True)
    results: list[RowGroup] = []
    weight_map: dict[str, str] = {}
    for row, (layers, members) in enumerate(groups):
        path = out / f"model-{row:05d}-of-{rows:05d}.safetensors"
        size = write_safetensors(path, members, metadata)
        results.append(RowGroup(row, layers, path, len(members), size))
        weight_map.update((tensor.name, path.name) for tensor in members)
    index = out / INDEX_NAME
    total = sum(tensor.length for tensor in tensors.values())
    document = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    index.write_text(json.dumps(document, indent=2) + "\n")
    directory = dst_dir.rstrip("/")
    specs = [
        AllotmentSpec(
            group.row,
            0,
            (
                FileCopy(group.path, f"{directory}/{group.path.name}".lstrip("/")),
                FileCopy(index, f"{directory}/{INDEX_NAME}".lstrip("/")),
            ),
        )
        for group in results
    ]
    spec_path = out / SPEC_NAME
    spec_path.write_bytes(dump_spec(specs, out))
    return SplitResult(spec_path, tuple(results), index)


def read_header(path: Path) -> tuple[dict[str, str] | None, list[_Tensor]]:
    """The metadata and tensors of a safetensors file, checked against the file's size."""
    try:
        with path.open("rb") as source:
            file_size = os.fstat(source.fileno()).st_size
            prefix = source.read(8)
            if len(prefix) < 8:
                raise SafetensorsFormatError(f"{path}: shorter than the 8-byte header length")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > min(_MAX_HEADER, file_size - 8):
                raise SafetensorsFormatError(f"{path}: header length {header_size} is impossible")
            header = source.read(header_size)
    except OSError as err:
        raise SafetensorsFormatError(f"{path}: cannot read: {err.strerror}") from None
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsFormatError(f"{path}: header is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise SafetensorsFormatError(f"{path}: header is not a JSON object")
    metadata = document.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise SafetensorsFormatError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + header_size
    tensors = [
        _tensor(path, name, entry, data_start, file_size) for name, entry in document.items()
    ]
    return metadata, tensors


def _tensor(path: Path, name: str, entry: Any, data_start: int, file_size: int) -> _Tensor:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise SafetensorsFormatError(f"{where}: not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise SafetensorsFormatError(f"{where}: dtype must be a string")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise SafetensorsFormatError(f"{where}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))):
        raise SafetensorsFormatError(f"{where}: data_offsets must be [begin, end]")
    begin, end = offsets
    if begin > end or data_start + end > file_size:
        raise SafetensorsFormatError(f"{where}: data_offsets {offsets} outside the file")
    bits = _DTYPE_BITS.get(dtype)
    if bits is not None and (end - begin) * 8 != math.prod(shape) * bits:
        raise SafetensorsFormatError(
            f"{where}: {end - begin} bytes do not hold {dtype} of shape {shape}"
        )
    return _Tensor(name, dtype, tuple(shape), path, data_start + begin, end - begin)


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _group(tensors: list[_Tensor], rows: int) -> list[tuple[tuple[int, ...], list[_Tensor]]]:
    """Consecutive layer indices in ``rows`` groups (first groups one larger when uneven)."""
    layer_of: dict[str, int] = {}
    for tensor in tensors:
        match = _LAYER.search(tensor.name)
        if match is not None:
            layer_of[tensor.name] = int(match.group(1))
    layers = sorted(set(layer_of.values()))
    if not layers:
        raise SafetensorsFormatError(
            "no tensor name has a layer index (model.layers.N., h.N., blocks.N., layer.N.)"
        )
    if rows > len(layers):
        raise SafetensorsFormatError(f"{rows} rows for {len(layers)} layers: rows would be empty")
    per_row, extra = divmod(len(layers), rows)
    row_of_layer: dict[int, int] = {}
    start = 0
    for row in range(rows):
        count = per_row + (1 if row < extra else 0)
        for layer in layers[start : start + count]:
            row_of_layer[layer] = row
        start += count
    groups: list[tuple[tuple[int, ...], list[_Tensor]]] = [
        (tuple(layer for layer in layers if row_of_layer[layer] == row), []) for row in range(rows)
    ]
    for tensor in tensors:
        if tensor.name in layer_of:
            row = row_of_layer[layer_of[tensor.name]]
        else:
            row = 0 if _EMBEDDING.search(tensor.name) else rows - 1
        groups[row][1].append(tensor)
    return groups


def write_safetensors(
    path: Path, tensors: Sequence[_Tensor], metadata: dict[str, str] | None
) -> int:
    """Writes ``tensors`` (copied from their sources) to ``path``; returns the file size."""
    ordered = sorted(tensors, key=lambda t: (-t.element_bits, t.name))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for tensor in ordered:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.length],
        }
        offset += tensor.length
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            _copy_tensors(ordered, out)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return 8 + len(encoded) + offset


def _copy_tensors(tensors: Sequence[_Tensor], out: IO[bytes]) -> None:
    sources: dict[Path, IO[bytes]] = {}
    try:
        for tensor in tensors:
            if tensor.source not in sources:
                sources[tensor.source] = tensor.source.open("rb")
            source = sources[tensor.source]
            source.seek(tensor.offset)
            left = tensor.length
            while left:
                block = source.read(min(left, _COPY_SIZE))
                if not block:
                    raise SafetensorsFormatError(f"{tensor.source} shrank while being read")
                out.write(block)
                left -= len(block)
    finally:
        for source in sources.values():
            source.close()
