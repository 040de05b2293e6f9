"""Content digests: the only thing that makes bytes from a registry trustworthy.

A digest is ``algorithm:hex``; sha256 is what every registry uses, sha512 is allowed by the
OCI spec. ``Verifier`` hashes a stream as it passes so that large blobs are checked without
being held in memory. Every part that checks or validates a digest (registry client, TOC,
snapshot labels, 2DFS field) uses this module, so they agree on what a digest is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

from lazy2dfs.errors import IntegrityError, InvalidArgumentError

_HEX_LENGTH: Final = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class InvalidDigestError(InvalidArgumentError):
    """A string that should be a digest is not one."""


class DigestMismatchError(IntegrityError):
    """Bytes did not hash to the digest that vouches for them; they are dropped, never
    returned."""


def is_sha256_digest(text: str) -> bool:
    """``sha256:`` and 64 lowercase hex digits: what TOCs and snapshot labels carry."""
    return text.startswith("sha256:") and is_sha256_hex(text[7:])


def is_sha256_hex(text: str) -> bool:
    """64 lowercase hex digits: a bare sha256, as the 2DFS field stores digests."""
    return _SHA256_HEX.fullmatch(text) is not None


def validate_digest(digest: str) -> str:
    """Returns ``digest`` unchanged when well formed, so it can go into a URL path."""
    match = _DIGEST.match(digest)
    if match is None or len(match.group(2)) != _HEX_LENGTH[match.group(1)]:
        raise InvalidDigestError(f"{digest!r} is not a sha256 or sha512 digest")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Verifier:
    """Hashes bytes in order and checks them against an expected digest at the end."""

    def __init__(self, expected: str) -> None:
        self.expected = validate_digest(expected)
        self._hash = hashlib.new(expected.split(":", 1)[0])
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def verify(self, what: str) -> None:
        """Raises ``DigestMismatchError`` naming ``what`` unless the bytes match."""
        algorithm = self.expected.split(":", 1)[0]
        actual = f"{algorithm}:{self._hash.hexdigest()}"
        if actual != self.expected:
            raise DigestMismatchError(
                f"{what}: expected {self.expected}, got {actual} ({self.size} bytes)"
            )


def verify_bytes(data: bytes, expected: str, what: str) -> bytes:
    """``data`` if it hashes to ``expected``; otherwise ``DigestMismatchError``."""
    verifier = Verifier(expected)
    verifier.update(data)
    verifier.verify(what)
    return data


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """containerd's chain IDs, which name layer snapshots: the first layer's diff ID, then
    sha256 of "parent child" for each next one."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            joined = f"{chain[-1]} {diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return chain
