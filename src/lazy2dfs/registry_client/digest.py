"""Content digests: the only thing that makes bytes from a registry trustworthy.

A digest is ``algorithm:hex``; sha256 is what every registry uses, sha512 is allowed by the
OCI spec. ``Verifier`` hashes a stream as it passes so that large blobs are checked without
being held in memory.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from lazy2dfs.registry_client.errors import DigestMismatchError, InvalidDigestError

_HEX_LENGTH: Final = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


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
