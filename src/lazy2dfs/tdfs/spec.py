"""The build file ``2dfs.json``, as the 2DFS builder reads it.

``{"allotments":[{"src": str|[str], "dst": str|[str], "row": int, "col": int}]}``: each allotment
copies regular files ``src[i]`` to ``dst[i]`` in the image. A single string stands for a list of
one, as in upstream's ``StringList``. Relative ``src`` paths are taken from the directory of the
build file (upstream takes them from the working directory; anchoring them to the file makes a
build independent of where it is started, and is the same thing in upstream's examples).

Checked up front, so that a build fails before it encodes anything: lists of equal length,
non-negative coordinates, one allotment per cell, one source per destination, safe destination
paths, sources that are regular files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lazy2dfs.tdfs.errors import BuildSpecError


@dataclass(frozen=True, slots=True)
class FileCopy:
    """One source file and where it goes in the image (clean, relative: ``model/a.bin``)."""

    src: Path
    dst: str


@dataclass(frozen=True, slots=True)
class AllotmentSpec:
    row: int
    col: int
    files: tuple[FileCopy, ...]


@dataclass(frozen=True, slots=True)
class BuildSpec:
    allotments: tuple[AllotmentSpec, ...]


def load_spec(path: Path) -> BuildSpec:
    """Reads and checks a build file; relative sources are resolved against its directory."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as err:
        raise BuildSpecError(f"{path}: cannot read: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BuildSpecError(f"{path}: not JSON: {err}") from None
    return parse_spec(document, path.parent, str(path))


def parse_spec(document: Any, base_dir: Path, name: str = "2dfs.json") -> BuildSpec:
    if not isinstance(document, dict) or not isinstance(document.get("allotments"), list):
        raise BuildSpecError(f'{name}: expected {{"allotments": [...]}}')
    allotments: list[AllotmentSpec] = []
    cells: set[tuple[int, int]] = set()
    for index, entry in enumerate(document["allotments"]):
        where = f"{name}: allotment {index}"
        if not isinstance(entry, dict):
            raise BuildSpecError(f"{where}: not a JSON object")
        row, col = _coordinate(entry, "row", where), _coordinate(entry, "col", where)
        where = f"{where} (row {row} col {col})"
        if (row, col) in cells:
            raise BuildSpecError(f"{where}: another allotment has the same row and col")
        cells.add((row, col))
        sources = _strings(entry.get("src"), f"{where}: src")
        targets = _strings(entry.get("dst"), f"{where}: dst")
        if len(sources) != len(targets):
            raise BuildSpecError(
                f"{where}: {len(sources)} src for {len(targets)} dst, they must pair up"
            )
        files = tuple(
            FileCopy(_source(base_dir, src, where), _destination(dst, where))
            for src, dst in zip(sources, targets, strict=True)
        )
        destinations = [file.dst for file in files]
        if len(set(destinations)) != len(destinations):
            raise BuildSpecError(f"{where}: the same dst appears twice")
        allotments.append(AllotmentSpec(row, col, files))
    if not allotments:
        raise BuildSpecError(f"{name}: no allotments")
    return BuildSpec(tuple(allotments))


def dump_spec(allotments: Sequence[AllotmentSpec], base_dir: Path) -> bytes:
    """A build file for ``allotments``, sources written relative to ``base_dir`` when inside it."""
    entries = []
    for allotment in allotments:
        sources = [
            file.src.relative_to(base_dir).as_posix()
            if file.src.is_relative_to(base_dir)
            else str(file.src)
            for file in allotment.files
        ]
        targets = ["/" + file.dst for file in allotment.files]
        entries.append(
            {
                "src": sources[0] if len(sources) == 1 else sources,
                "dst": targets[0] if len(targets) == 1 else targets,
                "row": allotment.row,
                "col": allotment.col,
            }
        )
    return json.dumps({"allotments": entries}, indent=2).encode() + b"\n"


def _coordinate(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BuildSpecError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _strings(value: object, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise BuildSpecError(f"{where} must be a string or a non-empty list of strings")
    return list(items)


def _source(base_dir: Path, src: str, where: str) -> Path:
    path = base_dir / src
    if not path.is_file():
        state = "is not a regular file" if path.exists() else "does not exist"
        raise BuildSpecError(f"{where}: src {src!r} {state} ({path})")
    return path


def _destination(dst: str, where: str) -> str:
    parts = [part for part in PurePosixPath(dst).parts if part not in ("/", ".")]
    if not parts or ".." in parts or "\x00" in dst:
        raise BuildSpecError(f"{where}: dst {dst!r} must name a file inside the image")
    return "/".join(parts)
