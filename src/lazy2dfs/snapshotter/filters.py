"""containerd's filter language, as used by ``List`` (and ``ctr snapshots ls`` filters).

A filter is a comma-separated list of selectors that must all match (AND); ``List`` receives
several filters and returns what matches any of them (OR). A selector is a field path,
optionally followed by an operator and a value::

    labels."containerd.io/snapshot.ref"==sha256:abc,parent==sha256:def
    kind!=committed
    name~=^k8s\\.io/
    labels.gc        (presence)

Field path parts are bare words or quoted strings (``"..."``, ``/.../`` or ``|...|``); values
are quoted strings or bare text up to the next comma. An empty filter matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.snapshotter.snapshot import Info

_OPERATORS = ("==", "!=", "~=")
_QUOTES = {'"': '"', "/": "/", "|": "|"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "/": "/", "|": "|"}


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: str  # "" means "field is present"
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, info: Info) -> bool:
        value, present = _field(info, self.fieldpath)
        if self.operator == "":
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return not present or value != self.value
        assert self.pattern is not None
        return present and self.pattern.search(value) is not None


def _field(info: Info, path: tuple[str, ...]) -> tuple[str, bool]:
    head, rest = path[0], path[1:]
    if head == "name" and not rest:
        return info.name, True
    if head == "parent" and not rest:
        return info.parent, True
    if head == "kind" and not rest:
        return info.kind.filter_name, True
    if head == "labels" and rest:
        key = ".".join(rest)
        return info.labels.get(key, ""), key in info.labels
    return "", False


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"invalid filter {self.text!r} at offset {self.pos}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def quoted(self) -> str:
        close = _QUOTES[self.text[self.pos]]
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == close:
                return "".join(out)
            if char == "\\":
                if self.pos >= len(self.text):
                    break
                escaped = self.text[self.pos]
                self.pos += 1
                if escaped not in _ESCAPES:
                    raise self.error(f"unknown escape \\{escaped}")
                out.append(_ESCAPES[escaped])
            else:
                out.append(char)
        raise self.error("unterminated quoted string")

    def field(self) -> str:
        self.skip_space()
        if self.peek() in _QUOTES:
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] == "_"
        ):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a field name")
        return self.text[start : self.pos]

    def value(self) -> str:
        self.skip_space()
        if self.peek() in _QUOTES:
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] != ",":
            if self.text[self.pos].isspace():
                break
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a value")
        return self.text[start : self.pos]

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        self.skip_space()
        operator = self.text[self.pos : self.pos + 2]
        if operator not in _OPERATORS:
            return Selector(tuple(path), "", "")
        self.pos += 2
        value = self.value()
        pattern = None
        if operator == "~=":
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise self.error(f"bad regular expression: {exc}") from exc
        return Selector(tuple(path), operator, value, pattern)

    def selectors(self) -> list[Selector]:
        result = [self.selector()]
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                return result
            if self.peek() != ",":
                raise self.error(f"unexpected {self.peek()!r}")
            self.pos += 1
            result.append(self.selector())


@dataclass(frozen=True)
class Filter:
    """OR of ANDs of selectors; matches every snapshot when empty."""

    alternatives: tuple[tuple[Selector, ...], ...]

    def matches(self, info: Info) -> bool:
        if not self.alternatives:
            return True
        return any(all(s.matches(info) for s in group) for group in self.alternatives)


def parse(filters: Sequence[str]) -> Filter:
    """Parses ``List``'s filters; an empty string among them matches everything."""
    groups: list[tuple[Selector, ...]] = []
    for text in filters:
        if not text.strip():
            return Filter(())
        groups.append(tuple(_Parser(text).selectors()))
    return Filter(tuple(groups))
