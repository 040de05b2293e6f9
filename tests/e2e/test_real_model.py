"""A real model (all-MiniLM-L6-v2, 91 MB of F32 safetensors, 104 tensors), partitioned by
encoder layer with ``lazy2dfs field from-safetensors``, built with ``lazy2dfs build``, and one
partition pulled through CRI (containerd 1.6, and 2.1's transfer service) and the partition
mirror: in the container, the safetensors library loads every tensor of the partition, bit
for bit the original's, finds each through the Hugging Face index, and the registry serves
nothing of the other layers."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.containerd import CRI_NAMESPACE, RELEASES
from devstack.images import build_image, build_layer
from devstack.model import (
    LOAD_TENSORS,
    interpreter,
    load_tensors,
    python_in_container,
    real_model,
    runtime_tree,
)
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, cri_mirror_stack, release_id
from tests.support.tdfs import allotment_digests, lazy2dfs, partitioned_image

ROWS = 6  # one per encoder layer; the embeddings join row 0, the pooler row 5
PARTITION = "2.0.3.0"  # encoder layers 2 and 3: a middle stage of a pipeline


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def mirrored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with cri_mirror_stack(tmp_path_factory.mktemp("model"), request.param) as stack:
        yield stack


def test_a_layer_partition_of_a_real_model_loads_bit_for_bit(
    mirrored: Stack, tmp_path: Path
) -> None:
    model = real_model()
    out = tmp_path / "field"
    lazy2dfs("field", "from-safetensors", str(model), "--rows", str(ROWS), "--out", str(out))
    runtime = build_image([build_layer(runtime_tree(), estargz=WriterOptions(mtime=946684800))])
    base = mirrored.push("minilm/runtime:v1", runtime)
    target = f"{mirrored.registry.host}/minilm/model:v1"
    lazy2dfs(
        "build", "-q", "-f", str(out / "2dfs.json"), "--cache-dir", str(tmp_path / "c"),
        "--push", "--plain-http", base, target,
    )  # fmt: skip
    ref = f"{target}--{PARTITION}"
    since = len(mirrored.registry.requests())

    assert mirrored.cri_pull(ref) == partitioned_image(ref).config_digest

    output = mirrored.run_command(
        ref,
        "minilm-stage",
        [interpreter(), "-c", LOAD_TENSORS, "/model"],
        CRI_NAMESPACE,
        python_in_container(),
    )
    inside = json.loads(output)
    original = load_tensors(model.parent)["tensors"]
    layers = {name.split(".")[2] for name in inside["tensors"]}
    assert layers == {"2", "3"}  # encoder.layer.2.* and encoder.layer.3.*, nothing else
    expected = {
        n: t for n, t in original.items() if n.startswith(("encoder.layer.2.", "encoder.layer.3."))
    }
    assert len(expected) == 32
    for name, (file, dtype, shape, digest) in inside["tensors"].items():
        assert [dtype, shape, digest] == expected[name][1:], name
        assert inside["weight_map"][name] == file  # the index says where each tensor is
    assert set(inside["tensors"]) == set(expected)
    assert set(inside["weight_map"]) == set(original)  # every tensor of the model, indexed

    rows = allotment_digests(target)
    served = {
        r.path.rsplit("/", 1)[-1]: r.status
        for r in mirrored.registry.requests()[since:]
        if "/blobs/sha256:" in r.path
    }
    assert not {rows[r] for r in (0, 1, 4, 5)} & set(served)
    assert served[rows[2]] == served[rows[3]] == 206  # read lazily, by range
