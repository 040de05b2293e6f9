"""One blob's bytes on local disk: the unpacked layer, filled in as segments arrive.

Each regular file of the layer has a backing file ``data/<n>`` (``n``: its number in the
layout), created sparse at the file's size on the first write; a segment's verified payloads
are written at their file offsets. Reading a present range is then a copy from the page cache
or a read of the disk: no decoding and no second hash. The backing files become the layer's
local tree once every segment is present (``layers.localtree``), which is what makes a warm
start cost what overlayfs costs.

Written through the page cache, handed to the disk at once at the idle I/O class, and dropped
from the page cache a little behind the writes (``cache.writeback``); recorded as durable late
(``remote.fetch.FLUSH_SECONDS``, and when the layer is complete). Written around the page cache
(``O_DIRECT``, until 64caaed) they went to the disk as they came, at the normal I/O class, and
held up the registry's reads and a starting container's own (cold 1 GiB zstd:chunked: ready
4.9-5.1 s against 5.8-6.5, first tensor 0.69-0.85 s against 0.96-1.40). The price: fresh pages,
which on the benchmark's VM cost 0.7-1.3 CPU-s more per GiB (gzip, short of CPU, gained least).
The backing files' pages are a second copy of what the FUSE files' pages hold, the copy readers
map: ``cache.writeback`` keeps it to the last bytes written, and ``drop_pages`` drops what is
left once the layer is complete and durable (``POSIX_FADV_DONTNEED``). Layers never completed
keep theirs, clean after a flush, for the kernel to reclaim.

What that copy costs a cold load, from an upper bound (a test build that wrote only the
segments a read waited for, not read-ahead or background ones, and so served holes to readers
that waited for those): cold 1 GiB zstd:chunked ready in 4.29-5.62 s, median 4.89, against
4.92-6.07, median 5.45, every one of 6 pairs won, the daemon 1.7 CPU-s/GiB lighter; gzip 6.08
against 6.45 (medians, 4 pairs).

Taking it, built and measured, did not land. A build held each background segment that had
gone whole into the FUSE files' page cache, with no read waiting for it (three quarters of a
zstd:chunked load's bytes, three fifths of gzip's), there alone, and wrote it once no layer's
background fetch was on its first pass, read back from there and verified again. Cold 1 GiB,
runs taking turns with this: ready a twentieth sooner (zstd:chunked medians 5.36 and 5.20 s
against 5.61 and 5.52 in two series, 7 of 11 pairs won; gzip 7.45 against 7.79, 4 of 4). But
the benchmark's VM pages out page cache it finds idle (DAMON, ``kdamond``: physical regions
idle for a minute, up to 128 MiB/s), and it took held pages before they were written (64 KiB
folios gone, their shadow entries left): 3 of 17 zstd:chunked loads fetched 1.05-1.09x the
bytes they needed, against 1.000 for every load that wrote as it fetched. With the held
pages locked in memory (``mlock`` on a mapping of the FUSE file) until written, no byte was
fetched twice in 10 loads, but the locked pages counted in the daemon's RSS (690-920 MiB
against 170-195), and mapping, locking and unmapping a GiB took the zstd:chunked gain (5.62 s
against 5.69, 3 of 6 pairs; gzip 7.18 against 7.58, 3 of 4).

Three ways around it lost (cold 1 GiB, runs taking turns with this). ``O_DIRECT`` at the idle
I/O priority (mq-deadline serves it after other I/O) saved the daemon about 1 CPU-s/GiB and the
model was ready no sooner (zstd:chunked 5.2-5.7 s against 4.5-5.5, 4 runs each). Each written
chunk's writeback started at once (``sync_file_range``) and its pages dropped 8 chunks later,
so that they came back as the next writes' pages, saved 1.2 CPU-s/GiB and the model was ready
later (median 5.80 s against 5.54, 5 runs each). Both put the cache's writes on the disk during
the load, beside the registry's reads, at the normal I/O class; at the idle class the second
is ``cache.writeback``, and won. Writes of 256 KiB cost the daemon 0.4-1.8 CPU-s/GiB more
in the load (3 runs each, zstd and gzip): alone, they fill fresh page cache in 0.4 s/GiB
against 1.9-2.6 for 4 MiB writes, but only for the first GiB after the page cache was dropped;
the next GiBs cost 1.7-2.1 s each at either size. A cold load takes about 3 GiB of new pages
(the registry's reads, these files, the FUSE files' pages): which allocation gets the cheap
first GiB changes nothing. Why (2026-12-08): the VM reports free blocks of 2 MiB and more to
its host (``page_reporting_order`` 9), so a page carved from one costs a fault on the host when
first touched, 8-10 µs per 4 KiB. A 4 MiB write gets 2 MiB folios, from those blocks; smaller
writes get small folios from the 2-3 GiB free in smaller blocks (``/proc/buddyinfo``), until
those run out. In the load that only moves the cost: written in 64 KiB pieces, cold 1 GiB
zstd:chunked was ready in 4.02-4.20 s against 3.26-4.31, the daemon at 4.9-5.0 CPU-s/GiB
against 3.8-5.3 (3 runs each, taking turns).

Tried again once a layer's diff ID was no longer hashed inside the load (``remote.flight.
FetchActivity``), when a perf profile (``cpu-clock``, whole machine) of one cold 1 GiB
zstd:chunked load put a third of the machine's samples in these writes' copy into fresh pages:
written aligned with ``O_DIRECT``, the model was ready sooner one hour (4.20-4.55 s against
4.55-4.66) and later the next (3.97-4.23 against 3.62-3.64; 3 runs each, taking turns). How
fast this VM's disk is decides it, so it stays written through the page cache.

Which segments are present is recorded in ``present.log``, an append-only list of records
(segment, flags, gap bytes, CRC). A record is appended only after its payload bytes were
``fdatasync``ed, and the log is synced before anyone relies on it, so after a crash or a power
loss the log lists only segments whose bytes are durable; a torn last record fails its CRC and
is cut off. Serving does not wait for that: a segment is readable as soon as its bytes are
written, and until its record is durable a crash only costs fetching it again.

A segment's gap (tar padding and headers, see ``estargz.layout``) is kept in its record: with
the payloads it rebuilds the layer's tar stream, whose digest (the diff ID) is what containerd
names the layer by. A segment copied from another layer, rather than decoded, holds only
payloads; its gap is *assumed* empty when none of its chunks ends a file (only then can tar
bytes follow a payload in a member) and *unknown* otherwise.

Thread-safe: writes come from the fetch's worker threads, reads from the FUSE loop and its
worker threads.
"""

from __future__ import annotations

import enum
import errno
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs.cache.writeback import WritebackWindow, WrittenRange
from lazy2dfs.errors import IntegrityError, UnavailableError
from lazy2dfs.estargz.layout import BlobLayout, RegularFile, Segment
from lazy2dfs.logfmt import get_logger

log = get_logger(__name__)

# (segment, flags, gap length, CRC-32 of the first three and the gap)
_RECORD = struct.Struct("<IIII")
_OPEN_FILES = 64  # backing files kept open per layer; more are reopened on demand
# A chunk read back for the diff ID comes in pieces of this much: a chunk can be a whole file.
_STREAM_BYTES = 1024 * 1024


class Gap(enum.IntEnum):
    """What is known of a present segment's gap."""

    KNOWN = 1  # decoded from the blob
    ASSUMED_EMPTY = 2  # copied payloads; the diff ID check confirms or refutes it
    UNKNOWN = 3  # copied payloads that may be followed by tar headers: fetch to learn it


class DiskFullError(UnavailableError):
    """The cache's disk refused a write; the bytes are served without being kept."""


@dataclass
class _Pending:
    segment: int
    gap: Gap
    gap_bytes: bytes


class LayerCache:
    """The backing files and presence records of one blob, under ``directory``."""

    def __init__(self, directory: Path, layout: BlobLayout) -> None:
        self.directory = directory
        self.layout = layout
        self._data = directory / "data"
        self._data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._gaps: dict[int, Gap] = {}  # present segments
        self._gap_at: dict[int, tuple[int, int]] = {}  # segment → (log offset, length)
        self._pending: list[_Pending] = []
        self._recording: list[_Pending] = []  # taken by a flush, offsets not yet known
        self._dirty: set[int] = set()  # file numbers written since the last flush
        self._numbered = tuple(layout.files.values())  # a file's number is its index
        self._files: OrderedDict[int, int] = OrderedDict()  # descriptors by file number
        self._created = False  # a backing file was created since the last flush
        self._stored = 0
        self._writeback = WritebackWindow()
        self._log_path = directory / "present.log"
        self._log = os.open(self._log_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._load_log()

    # Presence.

    def present(self, segment: Segment) -> bool:
        return segment.index in self._gaps

    def missing(self, segments: Sequence[Segment]) -> list[Segment]:
        return [s for s in segments if s.index not in self._gaps]

    def gap_state(self, segment: Segment) -> Gap | None:
        return self._gaps.get(segment.index)

    @property
    def complete(self) -> bool:
        """Every segment present (gaps known or assumed)."""
        with self._lock:
            return len(self._gaps) == len(self.layout.segments) and Gap.UNKNOWN not in set(
                self._gaps.values()
            )

    @property
    def stored_bytes(self) -> int:
        """Payload and gap bytes this cache holds on disk."""
        return self._stored

    def present_count(self) -> int:
        return len(self._gaps)

    # Writing.

    def store(
        self,
        segment: Segment,
        payloads: Sequence[bytes | memoryview],
        gap: Gap,
        gap_bytes: bytes = b"",
    ) -> None:
        """Writes verified ``payloads`` (one per chunk of ``segment``) into the backing files;
        the segment is readable at once and recorded at the next ``flush``. A segment present
        with an unknown or assumed gap learns its gap from a decoded copy. Raises
        ``DiskFullError`` when the disk has no room (nothing is marked present)."""
        with self._lock:
            old = self._gaps.get(segment.index)
        if old is not None and (old is Gap.KNOWN or gap is not Gap.KNOWN):
            return
        if old is None:
            self._write_payloads(segment, payloads)
        with self._lock:
            self._gaps[segment.index] = gap
            self._dirty.update(self._file_of(c.path).number for c in segment.chunks)
            self._pending.append(_Pending(segment.index, gap, gap_bytes))
            self._stored += len(gap_bytes) + (segment.payload_size if old is None else 0)

    def _write_payloads(self, segment: Segment, payloads: Sequence[bytes | memoryview]) -> None:
        try:
            for chunk, payload in zip(segment.chunks, payloads, strict=True):
                file = self._file_of(chunk.path)
                with self._descriptor(file) as fd:
                    _write_all(fd, memoryview(payload).cast("B"), chunk.file_offset)
                    written = WrittenRange(file.number, chunk.file_offset, chunk.size)
                    behind = self._writeback.written(fd, written)
                for old in behind:
                    with self._descriptor(self._numbered[old.file]) as fd:
                        os.posix_fadvise(fd, old.offset, old.size, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"cache disk full at {self.directory}: {exc}") from exc
            raise

    def drop_assumptions(self) -> list[Segment]:
        """Forgets the gaps assumed empty (they become unknown, so the background fetch
        decodes them); returns those segments."""
        with self._lock:
            assumed = [i for i, g in self._gaps.items() if g is Gap.ASSUMED_EMPTY]
            for index in assumed:
                self._gaps[index] = Gap.UNKNOWN
                self._pending.append(_Pending(index, Gap.UNKNOWN, b""))
        return [self.layout.segments[i] for i in assumed]

    def flush(self) -> int:
        """Makes written segments durable, then records them; returns how many it recorded.

        One flush at a time: a flush that finds nothing pending returns only once the one
        under way has recorded what it took, so that its caller (the diff ID check of a
        complete layer) finds every gap recorded, not taken and not yet written."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, []
            # Still readable by gap_bytes until their offsets in the log are known.
            self._recording.extend(pending)
            dirty, self._dirty = self._dirty, set()
            created, self._created = self._created, False
        if not pending:
            return 0
        for number in dirty:
            with self._descriptor(self._numbered[number]) as fd:
                os.fdatasync(fd)
        if created:
            _sync_directory(self._data)
        records = bytearray()
        offsets: list[tuple[int, int, int]] = []
        end = os.lseek(self._log, 0, os.SEEK_END)
        for item in pending:
            head = struct.pack("<III", item.segment, item.gap, len(item.gap_bytes))
            crc = zlib.crc32(item.gap_bytes, zlib.crc32(head))
            offsets.append((item.segment, end + len(records) + _RECORD.size, len(item.gap_bytes)))
            records += _RECORD.pack(item.segment, item.gap, len(item.gap_bytes), crc)
            records += item.gap_bytes
        try:
            os.write(self._log, records)
            os.fdatasync(self._log)
        except OSError as exc:
            # The disk refused the records: the segments stay readable, unrecorded, and are
            # fetched again after a restart. Cut off what was half written.
            os.ftruncate(self._log, end)
            with self._lock:
                self._pending[:0] = pending
                self._stop_recording(pending)
            log.warning(
                "cache records not written",
                path=self._log_path,
                error=exc.strerror,
                action="free space on the cache's disk; reads go on",
            )
            return 0
        with self._lock:
            for segment, offset, length in offsets:
                self._gap_at[segment] = (offset, length)
            self._stop_recording(pending)
        return len(pending)

    def drop_pages(self) -> None:
        """Drops what is left of the backing files' pages (``cache.writeback`` drops most as
        they are written), once the layer is complete and durable: the FUSE files' pages are
        the copy that running containers map, and a new container reads the local tree from
        the disk, as overlayfs's would."""
        for file in self._numbered:
            try:
                fd = os.open(self.backing_path(file), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _stop_recording(self, pending: list[_Pending]) -> None:
        """Under ``_lock``: ``pending`` is recorded in the log, or back in ``_pending``."""
        taken = {id(p) for p in pending}
        self._recording = [p for p in self._recording if id(p) not in taken]

    def _load_log(self) -> None:
        size = os.fstat(self._log).st_size
        data = os.pread(self._log, size, 0) if size else b""
        position = 0
        count = len(self.layout.segments)
        while position + _RECORD.size <= len(data):
            segment, flags, length, crc = _RECORD.unpack_from(data, position)
            start = position + _RECORD.size
            gap_bytes = data[start : start + length]
            head = struct.pack("<III", segment, flags, length)
            if (
                len(gap_bytes) != length
                or zlib.crc32(gap_bytes, zlib.crc32(head)) != crc
                or segment >= count
                or flags not in Gap._value2member_map_
            ):
                break
            if segment not in self._gaps:
                self._stored += self.layout.segments[segment].payload_size
            self._gaps[segment] = Gap(flags)  # a later record (a gap learnt) wins
            self._gap_at[segment] = (start, length)
            self._stored += length
            position = start + length
        if position < len(data):
            log.warning(
                "cache record cut off after a crash",
                path=self._log_path,
                kept=position,
                dropped=len(data) - position,
                action="none: the segments it named are fetched again",
            )
            os.ftruncate(self._log, position)
            os.fsync(self._log)

    # Reading.

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Bytes of the file at ``path``; the caller has checked that they are present."""
        with self._descriptor(self._file_of(path)) as fd:
            return os.pread(fd, size, offset)

    def read_cached(self, path: str, offset: int, into: memoryview) -> bool:
        """Fills ``into`` with the bytes at ``offset`` if the page cache holds all of them
        (``RWF_NOWAIT``: never waits on the disk, so the event loop may call it); whether it
        did.
        A cold load's reads at the fetch's heels find there the bytes just written.

        Payloads once stayed in memory for them as well, 16 MiB over all layers, from when
        backing files were written around the page cache: without them, cold 1 GiB
        zstd:chunked was ready in 4.79-4.89 s against 4.75-5.48, gzip 6.61-6.77 against
        6.24-6.83, and the daemon's peak RSS was 169-173 MiB against 198-213."""
        with self._descriptor(self._file_of(path)) as fd:
            try:
                got = os.preadv(fd, [into], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                return False
        return got == len(into)

    def gap_bytes(self, segment: Segment) -> bytes:
        """The recorded gap of a present segment (empty when assumed empty)."""
        with self._lock:
            where = self._gap_at.get(segment.index)
            pending = next(
                (
                    p
                    for p in reversed(self._recording + self._pending)  # newest first
                    if p.segment == segment.index
                ),
                None,
            )
        if pending is not None:
            return pending.gap_bytes
        if where is None:
            raise IntegrityError(f"segment {segment.index} of {self.directory} is not recorded")
        offset, length = where
        return os.pread(self._log, length, offset) if length else b""

    def stream(self) -> Iterator[bytes | memoryview]:
        """The layer's tar stream up to its TOC, rebuilt from payloads and gaps (complete
        layers only), in pieces that are each valid only until the next is taken."""
        for segment in self.layout.segments:
            yield from self._segment_stream(segment)

    def _segment_stream(self, segment: Segment) -> Iterator[bytes | memoryview]:
        """A present segment's part of the tar stream: its gap around its payloads, read
        from the page cache or the disk."""
        gap = memoryview(self.gap_bytes(segment))
        taken = position = 0
        for chunk in segment.chunks:
            before = chunk.inner_offset - position
            yield gap[taken : taken + before]
            taken += before
            with self._descriptor(self._file_of(chunk.path)) as fd:
                end = chunk.file_offset + chunk.size
                for start in range(chunk.file_offset, end, _STREAM_BYTES):
                    yield os.pread(fd, min(_STREAM_BYTES, end - start), start)
            position = chunk.inner_offset + chunk.size
        yield gap[taken:]

    def backing_path(self, file: RegularFile) -> Path:
        return self._data / str(file.number)

    # Files.

    def _file_of(self, path: str) -> RegularFile:
        file = self.layout.file(path)
        if file is None:
            raise IntegrityError(f"{path!r} has no content in this layer")
        return file

    @contextmanager
    def _descriptor(self, file: RegularFile) -> Iterator[int]:
        """A descriptor of ``file``'s backing file for one call. Open descriptors are kept
        (up to ``_OPEN_FILES``) and lent as duplicates, so closing one never pulls a
        descriptor from under a concurrent reader."""
        with self._lock:
            kept = self._files.get(file.number)
            if kept is not None:
                self._files.move_to_end(file.number)
                lent = os.dup(kept)
        if kept is None:
            opened = self._open(file)
            with self._lock:
                kept = self._files.setdefault(file.number, opened)
                lent = os.dup(kept)
                if kept != opened:
                    os.close(opened)
                while len(self._files) > _OPEN_FILES:
                    os.close(self._files.popitem(last=False)[1])
        try:
            yield lent
        finally:
            os.close(lent)

    def _open(self, file: RegularFile) -> int:
        path = self.backing_path(file)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, file.size)  # sparse: blocks appear as segments arrive
            with self._lock:
                self._created = True
        return fd

    def close(self) -> None:
        """Flushes and releases descriptors; the cache stays on disk."""
        self.flush()
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
        os.close(self._log)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    """Raises ``OSError`` (ENOSPC on a short write: a full disk)."""
    if os.pwrite(fd, view, offset) != len(view):
        raise OSError(errno.ENOSPC, "short write")


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
