"""The CLI end to end: safetensors → 2dfs.json → build --push → a partition holds its rows."""

import io
import json
import os
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from devstack.images import build_image, push_image
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from lazy2dfs.cli import main
from lazy2dfs.registry_client import host_platform
from lazy2dfs.tdfs import fetch_partitioned_image
from tests.support.registry import run
from tests.support.terminal import BAR, on_terminal


def _main(*argv: str) -> int:
    return main(list(argv))


def _model(path: Path, layers: int) -> None:
    header: dict[str, object] = {}
    data = b""
    names = ["model.embed_tokens.weight", *(f"model.layers.{i}.w" for i in range(layers))]
    for name in [*names, "lm_head.weight"]:
        header[name] = {"dtype": "U8", "shape": [4], "data_offsets": [len(data), len(data) + 4]}
        data += name.encode()[-4:]
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_from_safetensors_then_build_then_partition(
    registry: LocalRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _model(tmp_path / "model.safetensors", 8)
    out = tmp_path / "field"
    model = str(tmp_path / "model.safetensors")
    assert _main("field", "from-safetensors", model, "--rows", "4", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "row 0: layers 0-1" in printed and "row 3: layers 6-7" in printed

    base = f"{registry.host}/cli/base:v1"
    run(lambda c: push_image(c, base, build_image([{"etc/os": b"x"}], in_index=True)))
    target = f"{registry.host}/cli/model:v1"
    platform = str(host_platform())
    options = ["-f", str(out / "2dfs.json"), "--platform", platform, "--push"]
    options += ["--cache-dir", str(tmp_path / "cache"), "--chunk-size", "65536"]
    assert _main("build", *options, base, target) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().startswith(target + "@sha256:")
    assert "allotment 4/4" in captured.err and "pushed" in captured.err

    image = run(lambda c: fetch_partitioned_image(c, target + "--3.0.3.0"))
    last = json.loads(image.manifest)["layers"][-1]["digest"]
    blob = registry.blob_path(last).read_bytes()
    plain = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
        member = archive.extractfile("model/model-00003-of-00004.safetensors")
        assert member is not None
        header_size = struct.unpack("<Q", member.read(8))[0]
        names = set(json.loads(member.read(header_size)))
    assert names == {"model.layers.6.w", "model.layers.7.w", "lm_head.weight"}


def test_bad_platform_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--platform", "linux", "a", "b"])
    assert "platform" in capsys.readouterr().err


def test_build_on_a_terminal_shows_encoding_and_upload_bars(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    (tmp_path / "weights.bin").write_bytes(os.urandom(16 << 20))
    spec = {"allotments": [{"src": "weights.bin", "dst": "/model/w.bin", "row": 0, "col": 0}]}
    (tmp_path / "2dfs.json").write_text(json.dumps(spec))
    base = f"{registry.host}/cli/base:tty"
    run(lambda c: push_image(c, base, build_image([{"etc/os": b"x"}], in_index=True)))
    code, terminal = on_terminal(
        [
            *lazy2dfs_argv(),
            *("build", "-f", str(tmp_path / "2dfs.json"), "--push"),
            *("--cache-dir", str(tmp_path / "cache"), base, f"{registry.host}/cli/model:tty"),
        ]
    )
    assert code == 0, terminal
    labels = {bar["label"] for bar in BAR.finditer(terminal)}
    assert "allotment 1/1 row 0 col 0: encode" in labels, repr(terminal[-3000:])
    assert any(label.startswith("push ") for label in labels), labels
