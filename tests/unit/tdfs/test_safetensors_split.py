import json
import math
import struct
from pathlib import Path

import pytest

from lazy2dfs.tdfs import SafetensorsFormatError, load_spec, split_safetensors
from lazy2dfs.tdfs.safetensors_split import read_header

# name -> (dtype, shape, element size): a small decoder-only model with 6 blocks.
TENSORS = {
    "model.embed_tokens.weight": ("F32", [8, 4], 4),
    **{f"model.layers.{i}.attn.q.weight": ("BF16", [4, 4], 2) for i in range(6)},
    **{f"model.layers.{i}.mlp.up.bias": ("F32", [3], 4) for i in range(6)},
    "model.norm.weight": ("F32", [4], 4),
    "lm_head.weight": ("F16", [8, 4], 2),
}


def _payload(name: str, size: int) -> bytes:
    return (name.encode() * (size // len(name) + 1))[:size]


def _write(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """A safetensors file written by hand, independently of the code under test."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, item) in tensors.items():
        size = item
        for dim in shape:
            size *= dim
        offsets = [len(data), len(data) + size]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        data += _payload(name, size)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def _contents(path: Path) -> dict[str, bytes]:
    _, tensors = read_header(path)
    raw = path.read_bytes()
    return {t.name: raw[t.offset : t.offset + t.length] for t in tensors}


def test_rows_of_consecutive_layers_with_embeddings_first_and_head_last(tmp_path: Path) -> None:
    _write(tmp_path / "model.safetensors", TENSORS)
    result = split_safetensors([tmp_path / "model.safetensors"], 4, tmp_path / "out")
    assert [group.layers for group in result.rows] == [(0, 1), (2, 3), (4,), (5,)]
    names = [set(_contents(group.path)) for group in result.rows]
    assert "model.embed_tokens.weight" in names[0]
    assert {"model.norm.weight", "lm_head.weight"} <= names[3]
    assert "model.layers.1.attn.q.weight" in names[0]
    assert "model.layers.4.mlp.up.bias" in names[2]
    assert set().union(*names) == set(TENSORS) and sum(map(len, names)) == len(TENSORS)
    for group in result.rows:
        for name, data in _contents(group.path).items():
            assert data == _payload(name, len(data))
        assert group.size == group.path.stat().st_size
        header_size = struct.unpack("<Q", group.path.read_bytes()[:8])[0]
        assert header_size % 8 == 0
        metadata, _ = read_header(group.path)
        assert metadata == {"format": "pt"}

    spec = load_spec(result.spec)
    assert [(a.row, a.col) for a in spec.allotments] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert spec.allotments[2].files[0].src.resolve() == result.rows[2].path.resolve()
    assert spec.allotments[2].files[0].dst == "model/model-00002-of-00004.safetensors"


def test_shards_are_one_model_and_gpt2_names_are_layers(tmp_path: Path) -> None:
    _write(
        tmp_path / "a.safetensors",
        {
            "transformer.wte.weight": ("F32", [2, 2], 4),
            "transformer.h.0.attn.c_attn.weight": ("F32", [2], 4),
        },
    )
    _write(
        tmp_path / "b.safetensors",
        {
            "transformer.h.1.mlp.c_fc.weight": ("F32", [2], 4),
            "transformer.ln_f.weight": ("F32", [2], 4),
        },
    )
    result = split_safetensors(
        [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], 2, tmp_path, "/weights"
    )
    assert set(_contents(result.rows[0].path)) == {
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
    }
    assert set(_contents(result.rows[1].path)) == {
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.ln_f.weight",
    }
    assert load_spec(result.spec).allotments[0].files[0].dst.startswith("weights/")


def test_tensors_are_aligned_to_their_element_size(tmp_path: Path) -> None:
    _write(
        tmp_path / "m.safetensors",
        {
            "blocks.0.a": ("U8", [3], 1),
            "blocks.0.b": ("F64", [1], 8),
            "blocks.0.c": ("F16", [1], 2),
        },
    )
    result = split_safetensors([tmp_path / "m.safetensors"], 1, tmp_path / "out")
    _, tensors = read_header(result.rows[0].path)
    data_start = 8 + struct.unpack("<Q", result.rows[0].path.read_bytes()[:8])[0]
    assert [t.name for t in tensors] == ["blocks.0.b", "blocks.0.c", "blocks.0.a"]
    for tensor in tensors:
        assert (tensor.offset - data_start) % (tensor.element_bits // 8) == 0


def test_files_load_with_the_safetensors_library(tmp_path: Path) -> None:
    import numpy
    import numpy.typing
    import safetensors.numpy as library

    rng = numpy.random.default_rng(7)
    original = {
        "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(numpy.float32),
        **{f"model.layers.{i}.w": rng.standard_normal((8, 8)).astype("<f2") for i in range(5)},
        **{f"model.layers.{i}.n": numpy.arange(3, dtype=numpy.int64) + i for i in range(5)},
        "lm_head.weight": rng.standard_normal((16, 8)).astype(numpy.float64),
    }
    library.save_file(original, str(tmp_path / "model.safetensors"), metadata={"format": "np"})
    result = split_safetensors([tmp_path / "model.safetensors"], 3, tmp_path / "out")
    loaded: dict[str, numpy.typing.NDArray[numpy.generic]] = {}
    for group in result.rows:
        part = library.load_file(str(group.path))
        assert not set(part) & set(loaded)
        loaded.update(part)
    assert set(loaded) == set(original)
    for name, array in original.items():
        assert numpy.array_equal(loaded[name], array)


@pytest.mark.parametrize(
    ("tensors", "rows", "message"),
    [
        ({"embed.weight": ("F32", [1], 4)}, 1, "no tensor name has a layer index"),
        ({"h.0.w": ("F32", [1], 4), "h.1.w": ("F32", [1], 4)}, 3, "3 rows for 2 layers"),
        ({"h.0.w": ("F32", [1], 4)}, 0, "at least 1"),
    ],
)
def test_splits_that_cannot_be_made(
    tmp_path: Path, tensors: dict[str, tuple[str, list[int], int]], rows: int, message: str
) -> None:
    _write(tmp_path / "m.safetensors", tensors)
    with pytest.raises(SafetensorsFormatError, match=message):
        split_safetensors([tmp_path / "m.safetensors"], rows, tmp_path)


def test_a_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.safetensors", {"h.0.w": ("F32", [1], 4)})
    _write(tmp_path / "b.safetensors", {"h.0.w": ("F32", [1], 4)})
    with pytest.raises(SafetensorsFormatError, match=r"'h\.0\.w' is in both"):
        split_safetensors([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], 1, tmp_path)


def _raw(header: object, data: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x00", "shorter than the 8-byte"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header length .* is impossible"),
        (struct.pack("<Q", 2) + b"{]", "not JSON"),
        (_raw([]), "not a JSON object"),
        (_raw({"__metadata__": {"a": 1}}), "__metadata__"),
        (_raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "outside the file"),
        (
            _raw({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"x" * 8),
            "do not hold",
        ),
        (_raw({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "shape"),
        (_raw({"t": {"dtype": 1, "shape": [], "data_offsets": [0, 0]}}), "dtype"),
        (_raw({"t": {"dtype": "F32", "shape": [], "data_offsets": [4]}}), "data_offsets"),
    ],
)
def test_malformed_safetensors_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(SafetensorsFormatError, match=message):
        read_header(tmp_path / "bad.safetensors")


def test_the_index_maps_every_tensor_to_its_shard_and_goes_in_every_row(tmp_path: Path) -> None:
    """What Hugging Face loaders read for a sharded checkpoint; each partition carries it."""
    _write(tmp_path / "model.safetensors", TENSORS)
    result = split_safetensors([tmp_path / "model.safetensors"], 3, tmp_path / "out", "/w")
    assert result.index == tmp_path / "out" / "model.safetensors.index.json"
    index = json.loads(result.index.read_text())
    assert index["metadata"] == {
        "total_size": sum(item * math.prod(s) for _, s, item in TENSORS.values())
    }
    assert set(index["weight_map"]) == set(TENSORS)
    for group in result.rows:
        for name in _contents(group.path):
            assert index["weight_map"][name] == group.path.name
    for allotment in load_spec(result.spec).allotments:
        shard, copied = allotment.files
        assert shard.dst.startswith("w/model-") and copied.dst == "w/model.safetensors.index.json"
        assert copied.src.resolve() == result.index.resolve()
