import hashlib
import json

import pytest

from lazy2dfs.tdfs import Allotment, Field, FieldFormatError, parse_field

A = hashlib.sha256(b"a").hexdigest()
B = hashlib.sha256(b"b").hexdigest()
C = hashlib.sha256(b"c").hexdigest()

# Byte for byte what the Go builder's json.Marshal writes for allotments (0,0), (0,1), (2,0):
# rows and cells it never filled are present with empty digests.
STOCK = (
    '{"rows":['
    f'{{"allotments":[{{"row":0,"col":0,"digest":"{A}","diffid":"{B}"}},'
    f'{{"row":0,"col":1,"digest":"{B}","diffid":"{C}"}}],"allotments_size":2}},'
    '{"allotments":[],"allotments_size":0},'
    f'{{"allotments":[{{"row":2,"col":0,"digest":"{C}","diffid":"{A}"}}],"allotments_size":1}}'
    '],"rows_size":3,"owner":""}'
).encode()


def test_stock_field_round_trips_byte_for_byte() -> None:
    field = parse_field(STOCK)
    assert field.row_count == 3 and field.col_count == 2
    assert [(a.row, a.col, a.digest, a.diff_id) for a in field.allotments()] == [
        (0, 0, A, B),
        (0, 1, B, C),
        (2, 0, C, A),
    ]
    assert all(a.size is None and a.toc_digest is None for a in field.allotments())
    assert field.to_json() == STOCK


def test_from_allotments_lays_out_the_dense_grid_the_builder_writes() -> None:
    field = Field.from_allotments(
        [Allotment(2, 0, C, A), Allotment(0, 1, B, C), Allotment(0, 0, A, B)]
    )
    assert field.to_json() == STOCK


def test_gaps_inside_a_row_are_empty_allotments() -> None:
    field = Field.from_allotments([Allotment(0, 2, A, B)])
    document = json.loads(field.to_json())
    assert document["rows"][0]["allotments_size"] == 3
    assert [cell["digest"] for cell in document["rows"][0]["allotments"]] == ["", "", A]
    assert [a.col for a in field.allotments()] == [2]


def test_lazy2dfs_extras_round_trip_after_the_stock_keys() -> None:
    allotment = Allotment(0, 0, A, B, size=123, toc_digest=C, uncompressed_size=4096)
    data = Field.from_allotments([allotment]).to_json()
    cell = json.loads(data)["rows"][0]["allotments"][0]
    stock_keys = ["row", "col", "digest", "diffid"]
    assert list(cell) == [*stock_keys, "size", "toc_digest", "uncompressed_size"]
    assert parse_field(data) == Field(((allotment,),))
    assert parse_field(data).to_json() == data
    assert allotment.blob_digest == "sha256:" + A and allotment.diff_id_digest == "sha256:" + B


def test_owner_is_escaped_as_go_does() -> None:
    data = Field((), owner="<a&b>é").to_json()
    assert data == '{"rows":[],"rows_size":0,"owner":"\\u003ca\\u0026b\\u003eé"}'.encode()
    assert parse_field(data).owner == "<a&b>é"


def test_go_null_slices_are_empty() -> None:
    field = parse_field(b'{"rows":[{"allotments":null,"allotments_size":0}],"rows_size":1}')
    assert field.row_count == 1 and list(field.allotments()) == []


def _cell(**overrides: object) -> bytes:
    cell: dict[str, object] = {"row": 0, "col": 0, "digest": A, "diffid": B}
    cell.update(overrides)
    return json.dumps(
        {"rows": [{"allotments": [cell], "allotments_size": 1}], "rows_size": 1, "owner": ""}
    ).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"rows":{}}', "rows must be a list"),
        (b'{"rows":[],"rows_size":2}', "rows_size says 2, has 0"),
        (b'{"rows":[{"allotments":[],"allotments_size":1}]}', "row 0: allotments_size says 1"),
        (b'{"rows":[1]}', "row 0: not a JSON object"),
        (_cell(digest="sha256:" + A), "without 'sha256:'"),
        (_cell(digest=A.upper()), "64 lowercase hex"),
        (_cell(diffid=""), "both be set or both be empty"),
        (_cell(row=-1), "non-negative"),
        (_cell(col=True), "col must be an integer"),
        (_cell(size=-5), "size must be non-negative"),
        (_cell(toc_digest="xyz"), "toc_digest must be 64"),
        (b'{"rows":[],"owner":3}', "owner must be a string"),
        (_cell(compression="lz4"), "compression"),
        # A hostile field nested 100,000 deep: a format error, not an internal RecursionError.
        (b'{"rows":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON"),
    ],
)
def test_malformed_fields_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(FieldFormatError, match=message):
        parse_field(data)


def test_two_allotments_in_one_cell_are_refused() -> None:
    twice = {"row": 1, "col": 0, "digest": A, "diffid": B}
    data = json.dumps(
        {"rows": [{"allotments": [twice, twice], "allotments_size": 2}], "rows_size": 1}
    ).encode()
    with pytest.raises(FieldFormatError, match="two allotments at row 1 col 0"):
        parse_field(data)
    with pytest.raises(FieldFormatError, match="two allotments"):
        Field.from_allotments([Allotment(1, 0, A, B), Allotment(1, 0, B, C)])
