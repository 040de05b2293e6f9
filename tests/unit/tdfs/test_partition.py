import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazy2dfs.registry_client import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    Partition,
    parse_manifest,
    sha256_digest,
)
from lazy2dfs.tdfs import (
    FIELD_MEDIA_TYPE,
    Allotment,
    BlobSizeUnknownError,
    EmptyPartitionError,
    Field,
    ImageConfigError,
    NotA2dfsImageError,
    PartitionOutsideFieldError,
    missing_sizes,
    partition_image,
    select_allotments,
)


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _allotment(row: int, col: int, estargz: bool = True) -> Allotment:
    name = f"{row}.{col}"
    if not estargz:
        return Allotment(row, col, _hex("blob" + name), _hex("diff" + name))
    return Allotment(
        row,
        col,
        _hex("blob" + name),
        _hex("diff" + name),
        size=1000 + 10 * row + col,
        toc_digest=_hex("toc" + name),
        uncompressed_size=4096,
    )


# rows 0..3; row 0 has two columns, row 2 is empty (a gap the builder fills with empty cells).
FIELD = Field.from_allotments(
    [_allotment(0, 0), _allotment(0, 1), _allotment(1, 0), _allotment(3, 0)]
)
BASE_LAYER = Descriptor(
    mediaType=OCI_LAYER_GZIP, digest="sha256:" + _hex("base"), size=10, annotations={"k": "v"}
)
CONFIG = json.dumps(
    {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + _hex("base-diff")]},
        "x-unknown": {"kept": True},
    }
).encode()


def _manifest(field: Field = FIELD, config: bytes = CONFIG) -> ImageManifest:
    data = field.to_json()
    return ImageManifest(
        mediaType=OCI_MANIFEST,
        config=Descriptor(mediaType=OCI_CONFIG, digest=sha256_digest(config), size=len(config)),
        layers=(
            BASE_LAYER,
            Descriptor(mediaType=FIELD_MEDIA_TYPE, digest=sha256_digest(data), size=len(data)),
        ),
        annotations={"org.opencontainers.image.version": "v1"},
    )


def _cells(selected: tuple[Allotment, ...]) -> list[tuple[int, int]]:
    return [(a.row, a.col) for a in selected]


def test_a_rectangle_selects_the_allotments_inside_it() -> None:
    assert _cells(select_allotments(FIELD, [Partition(0, 0, 1, 0)])) == [(0, 0), (1, 0)]
    assert _cells(select_allotments(FIELD, [Partition(0, 1, 0, 1)])) == [(0, 1)]


def test_a_union_keeps_field_order_and_each_allotment_once() -> None:
    union = [Partition(3, 0, 3, 0), Partition(0, 0, 1, 1), Partition(1, 0, 1, 0)]
    assert _cells(select_allotments(FIELD, union)) == [(0, 0), (0, 1), (1, 0), (3, 0)]


def test_no_partition_means_the_whole_field() -> None:
    assert _cells(select_allotments(FIELD, [])) == [(0, 0), (0, 1), (1, 0), (3, 0)]


def test_a_rectangle_reaching_past_the_field_is_clipped() -> None:
    assert _cells(select_allotments(FIELD, [Partition(1, 0, 99, 99)])) == [(1, 0), (3, 0)]


def test_a_rectangle_outside_the_field_names_the_field_bounds() -> None:
    with pytest.raises(PartitionOutsideFieldError, match=r"4\.0\.5\.0 is outside .* 4 rows"):
        select_allotments(FIELD, [Partition(0, 0, 0, 0), Partition(4, 0, 5, 0)])
    with pytest.raises(PartitionOutsideFieldError, match=r"columns 0\.\.1"):
        select_allotments(FIELD, [Partition(0, 2, 0, 3)])


def test_a_selection_of_empty_cells_only_is_an_error() -> None:
    with pytest.raises(EmptyPartitionError, match=r"2\.0\.2\.1 selects no allotment"):
        select_allotments(FIELD, [Partition(2, 0, 2, 1)])
    with pytest.raises(EmptyPartitionError):
        select_allotments(Field(()), [])


@given(
    cells=st.sets(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=20),
    rectangles=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 3), st.integers(0, 3)),
        min_size=1,
        max_size=3,
    ),
)
def test_selection_is_the_union_of_the_rectangles(
    cells: set[tuple[int, int]], rectangles: list[tuple[int, int, int, int]]
) -> None:
    field = Field.from_allotments(_allotment(r, c) for r, c in cells)
    partitions = [Partition(x, y, x + dx, y + dy) for x, y, dx, dy in rectangles]
    expected = sorted((r, c) for r, c in cells if any(p.contains(r, c) for p in partitions))
    try:
        selected = _cells(select_allotments(field, partitions))
    except PartitionOutsideFieldError:
        assert any(p.x1 >= field.row_count or p.y1 >= field.col_count for p in partitions)
        return
    except EmptyPartitionError:
        assert expected == []
        return
    assert selected == expected


def test_partitioned_image_is_base_layers_then_selected_allotments() -> None:
    image = partition_image(_manifest(), CONFIG, FIELD, [Partition(1, 0, 3, 0)])
    manifest = parse_manifest(image.manifest, OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.annotations == {"org.opencontainers.image.version": "v1"}
    assert manifest.layers[0] == BASE_LAYER
    assert all(layer.media_type == OCI_LAYER_GZIP for layer in manifest.layers)
    assert [layer.digest for layer in manifest.layers[1:]] == [
        "sha256:" + _hex("blob1.0"),
        "sha256:" + _hex("blob3.0"),
    ]
    assert [layer.size for layer in manifest.layers[1:]] == [1010, 1030]
    assert manifest.layers[1].annotations == {
        TOC_DIGEST_ANNOTATION: "sha256:" + _hex("toc1.0"),
        UNCOMPRESSED_SIZE_ANNOTATION: "4096",
    }
    assert manifest.config.media_type == OCI_CONFIG
    assert manifest.config.digest == image.config_digest == sha256_digest(image.config)
    assert manifest.config.size == len(image.config)
    assert image.manifest_digest == sha256_digest(image.manifest)

    config = json.loads(image.config)
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + _hex("base-diff"),
        "sha256:" + _hex("diff1.0"),
        "sha256:" + _hex("diff3.0"),
    ]
    assert (config["architecture"], config["os"], config["variant"]) == ("arm64", "linux", "v8")
    assert config["x-unknown"] == {"kept": True}
    assert list(config) == list(json.loads(CONFIG))


def test_partitioning_is_deterministic() -> None:
    first = partition_image(_manifest(), CONFIG, FIELD, [Partition(0, 0, 0, 1)])
    again = partition_image(_manifest(), CONFIG, FIELD, [Partition(0, 0, 0, 1)])
    assert first == again


def test_stock_allotments_need_sizes_and_get_no_annotations() -> None:
    stock = Field.from_allotments([_allotment(0, 0, estargz=False), _allotment(1, 0, False)])
    partitions = [Partition(1, 0, 1, 0)]
    assert missing_sizes(stock, partitions) == ("sha256:" + _hex("blob1.0"),)
    with pytest.raises(BlobSizeUnknownError, match="row 1 col 0"):
        partition_image(_manifest(stock), CONFIG, stock, partitions)
    image = partition_image(
        _manifest(stock), CONFIG, stock, partitions, {"sha256:" + _hex("blob1.0"): 77}
    )
    layer = json.loads(image.manifest)["layers"][1]
    assert layer == {"mediaType": OCI_LAYER_GZIP, "digest": "sha256:" + _hex("blob1.0"), "size": 77}


def test_an_image_without_a_field_cannot_be_partitioned() -> None:
    plain = _manifest().model_copy(update={"layers": (BASE_LAYER,)})
    with pytest.raises(NotA2dfsImageError, match="has 0 layers of type"):
        partition_image(plain, CONFIG, FIELD, [])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"rootfs":{}}', "no rootfs.diff_ids"),
        (b'{"rootfs":{"diff_ids":[]}}', "0 diff IDs for 1 base layers"),
    ],
)
def test_a_broken_config_is_refused(config: bytes, message: str) -> None:
    with pytest.raises(ImageConfigError, match=message):
        partition_image(_manifest(), config, FIELD, [])
