"""Whole blobs a registry sent for a range request, kept on disk to serve later ranges.

A pull-through mirror (the CNCF registry in proxy mode) answers a range request for a blob it
does not hold yet with 200 and the whole blob, fetched from the origin for that request.
Dropping those bytes and asking again costs the origin the whole blob again; so the blob is
written as it arrives into an anonymous file under the spill directory (unlinked at once, so a
crash leaves nothing behind), and every range of it is read from there: bytes the stream has
passed at once, later ones when it gets there. Once complete the blob is checked against its
digest; until then its bytes are as trustworthy as a range answer, which the read path checks
chunk by chunk against the TOC before it uses them.

Bounded: at most ``max_bytes`` over all kept blobs (complete blobs unused the longest go first
to make room; a blob that does not fit is not kept), and a complete blob that no read used for
``idle_seconds`` goes. The caller says when it needs no more of a blob (``release``): the
daemon's cache keeps what the read path decoded, so the compressed copy is not kept twice.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Final

import trio

from lazy2dfs import metrics
from lazy2dfs.digest import DigestMismatchError
from lazy2dfs.logfmt import get_logger

log = get_logger(__name__)

# A blob whose spill failed (disk full, digest mismatch) is not spilled again for this long:
# its ranges go to registries meanwhile instead of failing the same way again.
RETRY_AFTER_FAILURE_SECONDS: Final = 60.0


class SpilledBlob:
    """One whole blob on its way to disk, or there. ``available`` bytes from the start are
    written; ``complete`` once every byte is there and matched the digest."""

    def __init__(self, digest: str, size: int, file: IO[bytes], host: str) -> None:
        self.digest = digest
        self.size = size
        self.host = host  # the endpoint streaming it (its ranges would come whole again)
        self.available = 0
        self.complete = False
        self.failure: Exception | None = None
        self.released = False
        self.bypassed = 0  # bytes of ranges asked elsewhere while the stream was behind
        self.last_used = trio.current_time()
        self._file = file
        self._position = 0  # where the stream writes next (0 again if a resume started over)
        self._hash = hashlib.new(digest.split(":", 1)[0])
        self._changed = trio.Event()
        self._readers = 0
        self._closed = False

    @property
    def done(self) -> bool:
        return self.complete or self.failure is not None

    async def wait_for(self, end: int) -> bool:
        """Waits until bytes up to ``end`` are written; False when the stream failed first."""
        while self.available < end and self.failure is None:
            await self._changed.wait()
        return self.failure is None

    async def read(self, offset: int, length: int) -> bytes | None:
        """Bytes already written (``offset + length <= available``); None once the spill was
        dropped."""
        assert offset + length <= self.available, "read past the spilled bytes"
        if self._closed:
            return None
        self.last_used = trio.current_time()
        self._readers += 1
        try:
            return await trio.to_thread.run_sync(os.pread, self._file.fileno(), length, offset)
        finally:
            self._readers -= 1
            self._close_if_dropped()

    # The stream's side.

    def restart(self) -> None:
        """The next bytes are the blob from its start again (a registry ignored a resume's
        Range): hash them anew; what is written stays readable."""
        self._position = 0
        self._hash = hashlib.new(self.digest.split(":", 1)[0])

    @property
    def position(self) -> int:
        return self._position

    @property
    def dropped(self) -> bool:
        """The spill area let the blob go (released, or the client closed)."""
        return self._closed

    async def append(self, data: bytes) -> None:
        """Writes the stream's next bytes (in a worker thread: hashing and writing release the
        GIL) and wakes the readers they complete."""
        if self._closed:
            raise SpillDroppedError(f"blob {self.digest}: the spill was dropped")
        if self._position + len(data) > self.size:
            raise DigestMismatchError(f"blob {self.digest}: more than {self.size} bytes sent")
        await trio.to_thread.run_sync(self._write, data, self._position)
        self._position += len(data)
        if self._position > self.available:
            self.available = self._position
            self._notify()

    def _write(self, data: bytes, offset: int) -> None:
        self._hash.update(data)
        os.pwrite(self._file.fileno(), data, offset)

    def finish(self) -> None:
        """Every byte is written: checks the digest."""
        actual = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if self._position != self.size or actual != self.digest:
            raise DigestMismatchError(
                f"blob {self.digest}: the whole blob sent is {actual} ({self._position} bytes)"
            )
        self.complete = True
        self._notify()

    def fail(self, failure: Exception) -> None:
        self.failure = failure
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def close(self) -> None:
        """Frees the disk space once no read is using the file."""
        self._closed = True
        self._close_if_dropped()

    def _close_if_dropped(self) -> None:
        if self._closed and self._readers == 0 and not self._file.closed:
            self._file.close()


class SpillDroppedError(Exception):
    """The stream of a blob its spill area let go has nowhere to write."""


class SpillArea:
    """The spilled blobs of one registry client, under ``directory``."""

    def __init__(self, directory: Path, max_bytes: int, idle_seconds: float) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._blobs: dict[str, SpilledBlob] = {}
        self._failed_at: dict[str, float] = {}

    @property
    def size_bytes(self) -> int:
        return sum(b.size for b in self._blobs.values())

    def find(self, digest: str) -> SpilledBlob | None:
        """The blob's spill, complete or under way; None if there is none (or it failed)."""
        self._drop_idle()
        blob = self._blobs.get(digest)
        if blob is None or blob.failure is not None:
            return None
        blob.last_used = trio.current_time()
        return blob

    def start(self, digest: str, size: int, host: str) -> SpilledBlob | None:
        """A new spill of ``size`` bytes streamed from ``host``, or None when it cannot be
        kept: larger than the bound, no room left by blobs in use, recently failed, or no
        file can be made."""
        now = trio.current_time()
        if now - self._failed_at.get(digest, -RETRY_AFTER_FAILURE_SECONDS) < (
            RETRY_AFTER_FAILURE_SECONDS
        ):
            return None
        self._drop_idle()
        if digest in self._blobs or not self._make_room(size):
            return None
        try:
            file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed by _drop
        except OSError as exc:
            log.warning("cannot spill a whole blob", blob=digest, reason=exc)
            return None
        blob = SpilledBlob(digest, size, file, host)
        self._blobs[digest] = blob
        metrics.WHOLE_BLOBS.labels("spilled").inc()
        return blob

    def finished(self, blob: SpilledBlob) -> None:
        """The stream of ``blob`` ended (complete or failed)."""
        if blob.failure is not None:
            self._failed_at[blob.digest] = trio.current_time()
            self._drop(blob)
        elif blob.released:
            self._drop(blob)

    def release(self, digest: str) -> None:
        """Nobody needs more of the blob: a complete spill goes now, one under way when its
        stream ends (other readers may be waiting on it)."""
        blob = self._blobs.get(digest)
        if blob is None:
            return
        blob.released = True
        if blob.done:
            self._drop(blob)

    def close(self) -> None:
        for blob in list(self._blobs.values()):
            self._drop(blob)

    def _make_room(self, size: int) -> bool:
        if size > self.max_bytes:
            return False
        idle = sorted((b for b in self._blobs.values() if b.done), key=lambda b: b.last_used)
        for blob in idle:
            if self.size_bytes + size <= self.max_bytes:
                break
            self._drop(blob)
        return self.size_bytes + size <= self.max_bytes

    def _drop_idle(self) -> None:
        limit = trio.current_time() - self.idle_seconds
        for blob in [b for b in self._blobs.values() if b.done and b.last_used < limit]:
            self._drop(blob)

    def _drop(self, blob: SpilledBlob) -> None:
        if self._blobs.get(blob.digest) is blob:
            del self._blobs[blob.digest]
        blob.close()
