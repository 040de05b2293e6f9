"""A sample model made locally: a real safetensors file of random float16 tensors.

Random bytes compress as badly as trained weights do, so fetch and unpack times are honest.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazy2dfs.localstack.images import Directory, File, Symlink, Tree

WEIGHTS_PATH = "model/model.safetensors"
BUSYBOX_APPLETS = (
    "sh",
    "head",
    "cat",
    "sha256sum",
    "wc",
    "ls",
    "echo",
    "tail",
    "sleep",
    "rm",
    "mv",
    "test",
)


@dataclass(frozen=True)
class SampleModel:
    """``safetensors`` is the file's bytes; ``first_tensor_end`` is how many leading bytes a
    loader reads to get the header and the first tensor."""

    safetensors: bytes
    first_tensor_end: int
    tensors: int


def sample_model(size_mib: int, layers: int = 8) -> SampleModel:
    """``layers`` transformer-like blocks of float16 weights, ``size_mib`` MiB in all."""
    per_tensor = (size_mib << 20) // layers // 2 * 2
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "made_by": "lazy2dfs demo"}}
    offset = 0
    for n in range(layers):
        header[f"model.layers.{n}.mlp.weight"] = {
            "dtype": "F16",
            "shape": [per_tensor // 2],
            "data_offsets": [offset, offset + per_tensor],
        }
        offset += per_tensor
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    prefix = struct.pack("<Q", len(encoded)) + encoded
    return SampleModel(prefix + os.urandom(offset), len(prefix) + per_tensor, layers)


def runtime_tree() -> Tree:
    """A static busybox with the applets the demo, benchmarks and tests call, and a /tmp."""
    tree: dict[str, File | Symlink | Directory | bytes] = {
        "bin/busybox": File(Path("/bin/busybox").read_bytes(), 0o755),
        "tmp": Directory(0o1777),
    }
    for applet in BUSYBOX_APPLETS:
        tree[f"bin/{applet}"] = Symlink("busybox")
    return tree
