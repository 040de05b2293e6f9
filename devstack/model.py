"""Sample models made locally: safetensors files of bf16-like or f16 weights.

bf16-like means random mantissas under a narrow range of exponents, as trained weights have:
such bytes compress a little (gzip keeps about 80 %), so fetch, inflate and unpack times are
honest where random bytes (incompressible) or zeros (free) would not be. f16 weights are
normally distributed (standard deviation 0.02, as initialised transformer weights are) and
keep about 92 % under gzip; numpy, and so safetensors' numpy loader, has no bfloat16, so a
benchmark that loads tensors with a real loader uses these.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from devstack.images import Directory, File, Symlink, Tree

MODEL_DIR = "model"
BUSYBOX_APPLETS = (
    "sh", "head", "cat", "sha256sum", "wc", "ls", "echo", "tail", "sleep", "rm", "mv", "test",
)  # fmt: skip


def bf16_like(size: int, seed: int) -> bytes:
    """``size`` bytes of little-endian bfloat16 values of magnitude about 2^-8..2^-4."""
    rng = numpy.random.default_rng(seed)
    count = size // 2
    high = rng.integers(0x3B, 0x3F, size=count, dtype=numpy.uint8)
    high |= rng.integers(0, 2, size=count, dtype=numpy.uint8) << 7  # sign
    pairs = numpy.empty((count, 2), dtype=numpy.uint8)
    pairs[:, 0] = rng.integers(0, 256, size=count, dtype=numpy.uint8)
    pairs[:, 1] = high
    return pairs.tobytes()


@dataclass(frozen=True)
class SampleModel:
    """``files`` maps a path in the image to a safetensors file's bytes; ``first_tensor_end``
    is how many leading bytes of the first file a loader reads for its first tensor."""

    files: dict[str, bytes]
    first_tensor_end: int
    tensors: int

    @property
    def paths(self) -> Sequence[str]:
        return sorted(self.files)


def f16_like(size: int, seed: int) -> bytes:
    """``size`` bytes of little-endian float16 values drawn from N(0, 0.02²), made in pieces
    so that a large model needs no float32 copy of itself."""
    rng = numpy.random.default_rng(seed)
    out = bytearray(size // 2 * 2)
    piece = 32 << 20  # values per piece
    for start in range(0, len(out) // 2, piece):
        count = min(piece, len(out) // 2 - start)
        values = rng.standard_normal(count, dtype=numpy.float32) * numpy.float32(0.02)
        out[2 * start : 2 * (start + count)] = values.astype("<f2").tobytes()
    return bytes(out)


_WEIGHTS = {"BF16": bf16_like, "F16": f16_like}


def _safetensors(
    layers: Sequence[int], per_tensor: int, seed: int, dtype: str
) -> tuple[bytes, int]:
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "made_by": "lazy2dfs"}}
    offset = 0
    # Data in name order, as safetensors writes it (so "layers.10" comes before "layers.2"):
    # a loader asking for tensors in ``keys()`` order then reads the file front to back.
    for name in sorted(f"model.layers.{n}.mlp.weight" for n in layers):
        header[name] = {
            "dtype": dtype,
            "shape": [per_tensor // 2],
            "data_offsets": [offset, offset + per_tensor],
        }
        offset += per_tensor
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    prefix = struct.pack("<Q", len(encoded)) + encoded
    return prefix + _WEIGHTS[dtype](offset, seed), len(prefix) + per_tensor


def sample_model(
    size_mib: int, files: int = 4, layers: int = 8, dtype: str = "BF16"
) -> SampleModel:
    """``layers`` transformer-like blocks, ``size_mib`` MiB in all, sharded over ``files``;
    ``dtype`` is ``BF16`` (bf16-like bytes) or ``F16``."""
    per_tensor = (size_mib << 20) // layers // 2 * 2
    per_file = layers // files
    shards: dict[str, bytes] = {}
    first_end = 0
    for shard in range(files):
        blocks = range(shard * per_file, (shard + 1) * per_file)
        data, tensor_end = _safetensors(blocks, per_tensor, size_mib * 100 + shard, dtype)
        name = f"{MODEL_DIR}/model-{shard + 1:05d}-of-{files:05d}.safetensors"
        shards[name] = data
        first_end = first_end or tensor_end
    return SampleModel(shards, first_end, layers)


def runtime_tree() -> Tree:
    """A static busybox with the applets the demo, benchmarks and tests call, and a /tmp."""
    tree: dict[str, File | Symlink | Directory | bytes] = {
        "bin/busybox": File(Path("/bin/busybox").read_bytes(), 0o755),
        "tmp": Directory(0o1777),
    }
    for applet in BUSYBOX_APPLETS:
        tree[f"bin/{applet}"] = Symlink("busybox")
    return tree
