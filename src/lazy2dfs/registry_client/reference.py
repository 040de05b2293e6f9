"""Image references, normalised as containerd does, with 2DFS partitions kept apart.

``busybox`` means ``docker.io/library/busybox:latest``; ``localhost:5000/m:v1@sha256:…`` keeps
host, port, tag and digest. A 2DFS reference adds partition suffixes to the tag:
``model:v1--0.0.1.3`` asks for the allotments in rows 0..1 and columns 0..3 of the field, and
``model:v1--0.0.0.0--2.0.3.0`` for the union of two rectangles. The registry only knows the
plain tag ``v1``; the partitions are applied by the client, so they live in
``Reference.partitions`` and never in ``Reference.tag``.

A trailing ``--`` piece of the tag is taken as a partition when it is made of digits, dots and
minus signs and contains a dot (``--1.2.3.4``, but also the malformed ``--1.2.3`` or
``--1.-2.3.4``, which are refused with a message rather than silently kept as a tag). Any other
``--`` piece, e.g. ``v1--rc``, stays part of the tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from lazy2dfs.digest import InvalidDigestError, validate_digest
from lazy2dfs.registry_client.errors import InvalidReferenceError

DOCKER_HUB: Final = "docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io"})
_MAX_NAME_LENGTH: Final = 255

_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_PARTITION_LIKE = re.compile(r"^[0-9.-]*\.[0-9.-]*$")
_PARTITION = re.compile(r"^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)$")


@dataclass(frozen=True, order=True)
class Partition:
    """A rectangle of a 2DFS field: rows ``x1..x2`` and columns ``y1..y2``, both inclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if min(self.x1, self.y1, self.x2, self.y2) < 0:
            raise InvalidReferenceError(f"partition {self}: coordinates must be non-negative")
        if self.x1 > self.x2 or self.y1 > self.y2:
            raise InvalidReferenceError(f"partition {self}: needs x1 <= x2 and y1 <= y2")

    def contains(self, row: int, col: int) -> bool:
        return self.x1 <= row <= self.x2 and self.y1 <= col <= self.y2

    def __str__(self) -> str:
        return f"{self.x1}.{self.y1}.{self.x2}.{self.y2}"


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; ``str()`` gives the canonical form back."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    partitions: tuple[Partition, ...] = ()

    @property
    def name(self) -> str:
        """``registry/repository``, the image name without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def object(self) -> str:
        """What to ask ``/v2/<repository>/manifests/`` for: the digest when known, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None  # parse_reference guarantees a tag or a digest
        return self.tag

    def with_digest(self, digest: str) -> Reference:
        """The same image pinned to ``digest`` (tag and partitions kept for display)."""
        return replace(self, digest=validate_digest(digest))

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += ":" + self.tag + "".join(f"--{p}" for p in self.partitions)
        if self.digest is not None:
            text += "@" + self.digest
        return text


def parse_reference(text: str) -> Reference:
    """Parses and normalises ``text``; raises ``InvalidReferenceError`` saying what is wrong."""
    if not text or text != text.strip():
        raise InvalidReferenceError(f"{text!r}: empty or surrounded by whitespace")
    remainder, digest = _split_digest(text)
    name, raw_tag = _split_tag(remainder, text)
    registry, repository = _split_registry(name)
    _check_repository(repository, text)
    if len(name) > _MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"{text!r}: name longer than {_MAX_NAME_LENGTH} characters")
    tag, partitions = (None, ()) if raw_tag is None else _split_partitions(raw_tag, text)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest, partitions)


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    remainder, digest = text.split("@", 1)
    try:
        return remainder, validate_digest(digest)
    except InvalidDigestError:
        raise InvalidReferenceError(
            f"{text!r}: digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>"
        ) from None


def _split_tag(remainder: str, text: str) -> tuple[str, str | None]:
    colon = remainder.rfind(":")
    if colon <= remainder.rfind("/"):
        return remainder, None
    tag = remainder[colon + 1 :]
    if not _TAG.match(tag):
        raise InvalidReferenceError(
            f"{text!r}: tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with . or -"
        )
    return remainder[:colon], tag


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not slash or not is_host:
        registry, repository = DOCKER_HUB, name
    else:
        registry, repository = first, rest
    if not _DOMAIN.match(registry):
        raise InvalidReferenceError(f"{name!r}: {registry!r} is not a valid registry host[:port]")
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = "library/" + repository
    return registry, repository


def _check_repository(repository: str, text: str) -> None:
    for component in repository.split("/"):
        if not _PATH_COMPONENT.match(component):
            hint = " (must be lowercase)" if component.lower() != component else ""
            raise InvalidReferenceError(
                f"{text!r}: repository component {component!r} is invalid{hint}"
            )


def _split_partitions(raw_tag: str, text: str) -> tuple[str, tuple[Partition, ...]]:
    pieces = raw_tag.split("--")
    partitions: list[Partition] = []
    while len(pieces) > 1 and _PARTITION_LIKE.match(pieces[-1]):
        partitions.append(_parse_partition(pieces.pop(), text))
    partitions.reverse()
    return "--".join(pieces), tuple(partitions)


def _parse_partition(piece: str, text: str) -> Partition:
    match = _PARTITION.match(piece)
    if match is None:
        raise InvalidReferenceError(
            f"{text!r}: partition {piece!r} must be x1.y1.x2.y2 with non-negative integers"
        )
    x1, y1, x2, y2 = (int(group) for group in match.groups())
    try:
        return Partition(x1, y1, x2, y2)
    except InvalidReferenceError as err:
        raise InvalidReferenceError(f"{text!r}: {err}") from None
