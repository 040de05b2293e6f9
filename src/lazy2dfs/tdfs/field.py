"""The 2DFS field: the blob, listed in an image manifest, that places allotments on a grid.

The stock 2DFS builder (Go, ``filesystem.TwoDFilesystem``) writes it with ``json.Marshal``::

    {"rows":[{"allotments":[{"row":0,"col":0,"digest":"<hex>","diffid":"<hex>"}],
              "allotments_size":1}],"rows_size":1,"owner":""}

``digest`` is the bare hex sha256 of the allotment's tar.gz blob, ``diffid`` that of its tar.
The grid is dense: a gap (row 2 exists but row 1 was never filled, or a row shorter than
another) is an *empty* allotment with ``""`` digests, which partitioning skips.

lazy2dfs adds three optional keys to an allotment: ``size`` (bytes of the blob, so that a
client partitions without one HEAD request per allotment), and for eStargz allotments
``toc_digest`` (bare hex) and ``uncompressed_size``, which become the layer annotations a lazy
snapshotter needs. Go's decoder ignores unknown keys, so the stock builder and registry read
these fields unchanged. :meth:`Field.to_json` writes the same bytes as Go for a stock field
(same key order, no spaces, Go's escaping), so parse → serialise keeps its digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from lazy2dfs.digest import is_sha256_hex
from lazy2dfs.tdfs.errors import FieldFormatError

FIELD_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.2dfs.field"
IMAGE_NAME_ANNOTATION: Final = "2dfs.image.name"

_GO_ESCAPES: Final = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_GO_ESCAPES.update({"\u2028": "\\u2028", "\u2029": "\\u2029"})


@dataclass(frozen=True, slots=True)
class Allotment:
    """One cell of the field; ``digest`` and ``diff_id`` are bare hex, both ``""`` when empty."""

    row: int
    col: int
    digest: str = ""
    diff_id: str = ""
    size: int | None = None
    toc_digest: str | None = None
    uncompressed_size: int | None = None
    compression: str | None = None  # "zstd" for zstd:chunked; gzip (the stock format) if None

    @property
    def empty(self) -> bool:
        return not self.digest

    @property
    def blob_digest(self) -> str:
        """The digest in OCI form (``sha256:<hex>``), as manifests and registries want it."""
        return "sha256:" + self.digest

    @property
    def diff_id_digest(self) -> str:
        return "sha256:" + self.diff_id


@dataclass(frozen=True, slots=True)
class Field:
    """Rows of allotments in the order the blob lists them, plus the (unused) owner string."""

    rows: tuple[tuple[Allotment, ...], ...]
    owner: str = ""

    @classmethod
    def from_allotments(cls, allotments: Iterable[Allotment], owner: str = "") -> Field:
        """The dense grid the stock builder would write for these allotments.

        Row ``r`` has columns ``0..max col of r``; missing rows and cells are empty allotments.
        """
        cells: dict[tuple[int, int], Allotment] = {}
        for allotment in allotments:
            _check_coordinates(allotment.row, allotment.col, "allotment")
            if (allotment.row, allotment.col) in cells:
                raise FieldFormatError(f"two allotments at row {allotment.row} col {allotment.col}")
            cells[(allotment.row, allotment.col)] = allotment
        row_count = 1 + max((row for row, _ in cells), default=-1)
        rows = []
        for row in range(row_count):
            width = 1 + max((c for r, c in cells if r == row), default=-1)
            rows.append(tuple(cells.get((row, col), Allotment(row, col)) for col in range(width)))
        return cls(tuple(rows), owner)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def col_count(self) -> int:
        """The width of the widest row."""
        return max((len(row) for row in self.rows), default=0)

    def allotments(self) -> Iterator[Allotment]:
        """Non-empty allotments in field order (row by row), as upstream iterates them."""
        for row in self.rows:
            yield from (allotment for allotment in row if not allotment.empty)

    def to_json(self) -> bytes:
        rows = ",".join(
            '{"allotments":['
            + ",".join(_allotment_json(allotment) for allotment in row)
            + f'],"allotments_size":{len(row)}}}'
            for row in self.rows
        )
        return (
            f'{{"rows":[{rows}],"rows_size":{len(self.rows)},"owner":{_go_string(self.owner)}}}'
        ).encode()


def parse_field(data: bytes) -> Field:
    """Parses a field blob; raises ``FieldFormatError`` naming the offending row or allotment."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise FieldFormatError(f"field is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise FieldFormatError("field is not a JSON object")
    rows = _list(document.get("rows"), "field: rows")
    if _int(document.get("rows_size", len(rows)), "field: rows_size") != len(rows):
        raise FieldFormatError(f"field: rows_size says {document['rows_size']}, has {len(rows)}")
    owner = document.get("owner", "")
    if not isinstance(owner, str):
        raise FieldFormatError("field: owner must be a string")
    seen: set[tuple[int, int]] = set()
    parsed_rows = []
    for index, row in enumerate(rows):
        where = f"field row {index}"
        if not isinstance(row, dict):
            raise FieldFormatError(f"{where}: not a JSON object")
        cells = _list(row.get("allotments"), f"{where}: allotments")
        size = _int(row.get("allotments_size", len(cells)), f"{where}: allotments_size")
        if size != len(cells):
            raise FieldFormatError(f"{where}: allotments_size says {size}, has {len(cells)}")
        parsed = tuple(
            _parse_allotment(cell, f"{where} allotment {i}") for i, cell in enumerate(cells)
        )
        for allotment in parsed:
            if allotment.empty:
                continue
            if (allotment.row, allotment.col) in seen:
                raise FieldFormatError(
                    f"field: two allotments at row {allotment.row} col {allotment.col}"
                )
            seen.add((allotment.row, allotment.col))
        parsed_rows.append(parsed)
    return Field(tuple(parsed_rows), owner)


def _parse_allotment(cell: object, where: str) -> Allotment:
    if not isinstance(cell, dict):
        raise FieldFormatError(f"{where}: not a JSON object")
    row = _int(cell.get("row"), f"{where}: row")
    col = _int(cell.get("col"), f"{where}: col")
    where = f"{where} (row {row} col {col})"
    _check_coordinates(row, col, where)
    digest = _hex_or_empty(cell.get("digest", ""), f"{where}: digest")
    diff_id = _hex_or_empty(cell.get("diffid", ""), f"{where}: diffid")
    if bool(digest) != bool(diff_id):
        raise FieldFormatError(f"{where}: digest and diffid must both be set or both be empty")
    toc_digest = cell.get("toc_digest")
    if toc_digest is not None:
        toc_digest = _hex_or_empty(toc_digest, f"{where}: toc_digest") or None
    return Allotment(
        row=row,
        col=col,
        digest=digest,
        diff_id=diff_id,
        size=_optional_size(cell, "size", where),
        toc_digest=toc_digest,
        uncompressed_size=_optional_size(cell, "uncompressed_size", where),
        compression=_compression(cell.get("compression"), where),
    )


def _compression(value: object, where: str) -> str | None:
    if value is None or value == "zstd":
        return value
    raise FieldFormatError(f'{where}: compression {value!r} is not "zstd" (absent means gzip)')


def _check_coordinates(row: int, col: int, where: str) -> None:
    if row < 0 or col < 0:
        raise FieldFormatError(f"{where}: row and col must be non-negative")


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []  # Go writes a nil slice as null
    if not isinstance(value, list):
        raise FieldFormatError(f"{where} must be a list")
    return value


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldFormatError(f"{where} must be an integer, got {value!r}")
    return value


def _optional_size(cell: Mapping[str, object], key: str, where: str) -> int | None:
    if cell.get(key) is None:
        return None
    size = _int(cell[key], f"{where}: {key}")
    if size < 0:
        raise FieldFormatError(f"{where}: {key} must be non-negative")
    return size


def _hex_or_empty(value: object, where: str) -> str:
    if not isinstance(value, str) or (value and not is_sha256_hex(value)):
        hint = " (bare hex, without 'sha256:')" if isinstance(value, str) and ":" in value else ""
        raise FieldFormatError(f"{where} must be 64 lowercase hex digits or empty{hint}")
    return value


def _allotment_json(allotment: Allotment) -> str:
    text = (
        f'{{"row":{allotment.row},"col":{allotment.col},'
        f'"digest":"{allotment.digest}","diffid":"{allotment.diff_id}"'
    )
    if allotment.size is not None:
        text += f',"size":{allotment.size}'
    if allotment.toc_digest is not None:
        text += f',"toc_digest":"{allotment.toc_digest}"'
    if allotment.uncompressed_size is not None:
        text += f',"uncompressed_size":{allotment.uncompressed_size}'
    if allotment.compression is not None:
        text += f',"compression":"{allotment.compression}"'
    return text + "}"


def _go_string(text: str) -> str:
    """A JSON string as Go's encoding/json writes it (HTML-safe escapes, UTF-8 kept)."""
    encoded = json.dumps(text, ensure_ascii=False)
    return "".join(_GO_ESCAPES.get(char, char) for char in encoded)
