"""The builder's local cache: blobs by digest, and which blob an allotment's inputs encode to.

Layout under the cache root (default ``$XDG_CACHE_HOME/lazy2dfs``, i.e. ``~/.cache/lazy2dfs``)::

    blobs/sha256/<hex>           allotment blobs, and base-image blobs fetched for --as-tar
    allotments/<key>.json        what the inputs with that key encoded to (digests, sizes)

The key is a sha256 over the sources' contents, modes and destinations and the encoding
options, so an unchanged allotment is found again whatever its source paths are, and one
changed byte makes a new key. Files appear by rename only, so a crash never leaves a partial
blob or record under its final name; a record whose blob is gone or has the wrong size is a miss.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from lazy2dfs.registry_client import InvalidDigestError, validate_digest


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lazy2dfs"


@dataclass(frozen=True, slots=True)
class EncodedBlob:
    """What an allotment's inputs encoded to; digests in OCI form (``sha256:<hex>``)."""

    digest: str
    size: int
    diff_id: str
    toc_digest: str
    uncompressed_size: int
    compression: str = "gzip"


class BlobStore:
    """Content-addressed files; a blob is present when its file exists with the right size."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        algorithm, hex_digest = validate_digest(digest).split(":", 1)
        return self.root / algorithm / hex_digest

    def has(self, digest: str, size: int) -> bool:
        try:
            return self.path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    @contextmanager
    def writer(self) -> Iterator[tuple[IO[bytes], Path]]:
        """A temporary file in the store, removed unless :meth:`commit` renamed it."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.root, prefix=".partial-")
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                yield out, path
        finally:
            path.unlink(missing_ok=True)

    def commit(self, temporary: Path, digest: str) -> Path:
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, target)
        return target


class AllotmentCache:
    """Allotment records by key, and the blob store they point into."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs")
        self._records = root / "allotments"

    def get(self, key: str) -> EncodedBlob | None:
        try:
            record = EncodedBlob(**json.loads((self._records / f"{key}.json").read_bytes()))
            present = self.blobs.has(record.digest, record.size)
        except (OSError, ValueError, TypeError, InvalidDigestError):
            return None  # a damaged record is a miss: the allotment is encoded again
        return record if present else None

    def put(self, key: str, record: EncodedBlob) -> None:
        self._records.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self._records, prefix=".partial-")
        with os.fdopen(handle, "w") as out:
            json.dump(asdict(record), out)
        os.replace(name, self._records / f"{key}.json")
