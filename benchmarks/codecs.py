"""How fast layers are written and read: the eStargz/zstd:chunked writer against ``gzip -6``,
and chunk fetch + inflate + verify from a registry on loopback, with zlib and with ISA-L.

The input is a tar of WEIGHTS_MIB of bf16-like weights: uint16 values whose low byte (low
exponent bit + mantissa) is random and whose high byte (sign + high exponent bits) comes from a
narrow range, so it compresses somewhat, as real weights do. Every writer converts the same tar
bytes; ``gzip -6`` (the command) compresses them in the same run as the baseline. The reader
pushes the eStargz blob to a LocalRegistry and reads every chunk with 2 concurrent range reads
(registry_client ``blob_reader``), inflating and verifying each one: with
:func:`lazy2dfs.estargz.decode_chunk` (zlib), and with the same steps through
``isal.isal_zlib`` when python-isal is installed. "inflate only" rows decompress every chunk in
memory on one thread, without the network and the digest, to show the inflater's own speed (zlib,
ISA-L, and libdeflate, which the daemon uses for a segment of one member);
the "compress only" row deflates the tar with ISA-L into 4 MiB gzip members, in memory, to show
what the writer would gain from it (the writer itself uses zlib).
Writer rows also give CPU seconds (gzip's, or this process's over all threads) and every row
the 1-minute load average: on a busy machine the wall-clock speeds, not the CPU seconds, suffer.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np
import trio

from benchmarks import report
from devstack.registry import LocalRegistry
from lazy2dfs.estargz import (
    Chunk,
    ChunkDigestMismatchError,
    Compression,
    Toc,
    WriterOptions,
    decode_chunk,
    open_blob_async,
    write_blob_from_tar,
)
from lazy2dfs.estargz.members import inflate_gzip_segment
from lazy2dfs.registry_client import CredentialStore, RegistryClient

WEIGHTS_MIB: Final = 512  # 1 GiB took ~8 min here: gzip -6 alone runs ~8 MiB/s on this data
FILES: Final = 4  # weight shards in the tar
READERS: Final = 2  # concurrent chunk fetches
MEMBER_SIZE: Final = 4 << 20  # the writer's default chunk size
ISAL_LEVEL: Final = 2  # ISA-L has levels 0..3; 2 was the fastest and smallest on this data
_GAP_ROOM: Final = 1 << 20  # decoded bytes a member may hold past its chunk (tar headers)
_BLOCK_ELEMENTS: Final = 16 << 20  # uint16 values generated per step (32 MiB)
# Sign bit random, exponent within a few binades of 1.0 (bf16 high byte 0x3c..0x3f / 0xbc..0xbf).
_HIGH_BYTES: Final = np.array([0x3C, 0x3D, 0x3E, 0x3F, 0xBC, 0xBD, 0xBE, 0xBF], dtype=np.uint16)
_HIGH_WEIGHTS: Final = np.array([0.05, 0.2, 0.2, 0.05, 0.05, 0.2, 0.2, 0.05])

try:
    from isal import isal_zlib as _isal_zlib

    ISAL: ModuleType | None = _isal_zlib
except ImportError:  # optional: only the zlib rows are measured
    ISAL = None

Decoder = Callable[[Chunk, bytes], bytes]


def _load() -> float:
    """The 1-minute load average: on a shared machine, other work skews wall-clock speeds."""
    return os.getloadavg()[0]


def _weights(rng: np.random.Generator, size: int) -> bytes:
    elements = size // 2
    high = rng.choice(_HIGH_BYTES, size=elements, p=_HIGH_WEIGHTS)
    low = rng.integers(0, 256, size=elements, dtype=np.uint16)
    return ((high << 8) | low).astype("<u2").tobytes()


def _make_tar(path: Path) -> int:
    rng = np.random.default_rng(2024)
    shard = (WEIGHTS_MIB << 20) // FILES
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(FILES):
            info = tarfile.TarInfo(f"model/shard-{index}.bin")
            info.size = shard
            info.mtime = 946684800
            tar.addfile(info, _Generated(rng, shard))
    return path.stat().st_size


class _Generated(io.RawIOBase):
    """A file-like object producing ``size`` bytes of weights, one block at a time."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self._rng = rng
        self._left = size
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        while len(self._buffer) < wanted:
            self._buffer += _weights(self._rng, min(_BLOCK_ELEMENTS * 2, self._left))
        data, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
        self._left -= len(data)
        return data


def _time_gzip(tar: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (the gzip process) and compressed size."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with tar.open("rb") as source:
        done = subprocess.run(["gzip", "-6", "-c"], stdin=source, capture_output=True, check=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return seconds, cpu_seconds, len(done.stdout)


def _time_writer(tar: Path, out: Path, options: WriterOptions) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (this process, all threads) and blob size."""
    cpu = time.process_time()
    start = time.perf_counter()
    with tar.open("rb") as source, out.open("wb") as sink:
        result = write_blob_from_tar(source, sink, options)
    return time.perf_counter() - start, time.process_time() - cpu, result.blob_size


def _time_isal(tar: Path) -> tuple[float, float, int]:
    """ISA-L deflate of the tar as 4 MiB gzip members (what the writer would produce), in memory."""
    assert ISAL is not None
    total = 0
    cpu = time.process_time()
    start = time.perf_counter()
    with tar.open("rb") as source:
        while segment := source.read(MEMBER_SIZE):
            deflate = ISAL.compressobj(ISAL_LEVEL, ISAL.DEFLATED, 16 + ISAL.MAX_WBITS)
            total += len(deflate.compress(segment)) + len(deflate.flush())
    return time.perf_counter() - start, time.process_time() - cpu, total


def _isal_decode(chunk: Chunk, compressed: bytes) -> bytes:
    """:func:`decode_chunk` (gzip) with ISA-L's inflater: same bound, same digest check."""
    assert ISAL is not None
    wanted = chunk.inner_offset + chunk.size
    plain: bytes = ISAL.decompressobj(16 + ISAL.MAX_WBITS).decompress(compressed, wanted)
    payload = plain[chunk.inner_offset : wanted]
    if "sha256:" + hashlib.sha256(payload).hexdigest() != chunk.digest:
        raise ChunkDigestMismatchError(f"chunk of {chunk.path!r} at {chunk.file_offset}")
    return payload


async def _read_all(
    client: RegistryClient, ref: str, digest: str, size: int, decode: Decoder
) -> tuple[float, int]:
    reader = client.blob_reader(ref, digest, size)
    toc = await open_blob_async(reader.read_range, size)
    chunks = list(toc.iter_chunks())
    position = 0
    served = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal position, served
        while position < len(chunks):
            chunk = chunks[position]
            position += 1
            data = await reader.read_range(chunk.compressed_offset, chunk.compressed_size)
            payload = await trio.to_thread.run_sync(decode, chunk, data)
            served += len(payload)

    async with trio.open_nursery() as nursery:
        for _ in range(READERS):
            nursery.start_soon(worker)
    return time.perf_counter() - start, served


# A member and the bytes it may inflate to, decoded.
Inflate = Callable[[bytes, int], object]


def _streamed(decompressobj: Callable[[int], Any]) -> Inflate:
    return lambda member, limit: decompressobj(16 + zlib.MAX_WBITS).decompress(member, limit)


def _inflate_only(blob: bytes, toc: Toc, inflate: Inflate) -> float:
    start = time.perf_counter()
    for chunk in toc.iter_chunks():
        member = blob[chunk.compressed_offset : chunk.compressed_end]
        inflate(member, chunk.inner_offset + chunk.size)
    return time.perf_counter() - start


def run() -> Path:
    mib = float(1 << 20)
    raw: dict[str, Any] = {"weights_mib": WEIGHTS_MIB, "isal": ISAL is not None}
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="l2d-codecs-") as tmp:
        work = Path(tmp)
        tar = work / "weights.tar"
        tar_size = _make_tar(tar)
        raw["tar_bytes"] = tar_size

        def row(name: str, timed: tuple[float, float, int], baseline: float) -> None:
            seconds, cpu_seconds, out_size = timed
            speed = tar_size / mib / seconds
            ratio = f"{out_size / tar_size:.3f}"
            rows.append([name, seconds, cpu_seconds, speed, ratio, speed / baseline, _load()])
            raw[name] = {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "bytes": out_size,
                "mib_per_s": speed,
                "load_1min": _load(),
            }

        gzip_timed = _time_gzip(tar)
        gzip_speed = tar_size / mib / gzip_timed[0]
        row("write: gzip -6 (command)", gzip_timed, gzip_speed)
        blob = work / "blob.estargz"
        for name, options, keep in [
            ("write: eStargz gzip-6, 1 worker", WriterOptions(workers=1), False),
            ("write: eStargz gzip-6, 2 workers", WriterOptions(workers=2), True),
            (
                "write: zstd:chunked zstd-3, 2 workers",
                WriterOptions(workers=2, compression=Compression.ZSTD),
                False,
            ),
        ]:
            out = blob if keep else work / "scratch"
            row(name, _time_writer(tar, out, options), gzip_speed)
            if not keep:
                out.unlink()
        if ISAL is not None:
            row(
                f"compress only: isal_zlib level {ISAL_LEVEL}, 1 thread",
                _time_isal(tar),
                gzip_speed,
            )
        tar.unlink()

        data = blob.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        decoders: dict[str, Decoder] = {"zlib (decode_chunk)": decode_chunk}
        if ISAL is not None:
            decoders["isal_zlib"] = _isal_decode
        with LocalRegistry(work / "registry") as registry:
            ref = f"{registry.host}/bench/codecs:v1"

            async def fetch_all() -> dict[str, tuple[float, int]]:
                async with RegistryClient(credentials=CredentialStore()) as client:
                    await client.push_blob(ref, digest, blob, chunk_size=64 << 20)
                    results = {}
                    for name, decode in decoders.items():
                        results[name] = await _read_all(client, ref, digest, len(data), decode)
                    return results

            fetched = trio.run(fetch_all)
        toc_holder: list[Toc] = []

        async def parse() -> None:
            async def read(offset: int, length: int) -> bytes:
                return data[offset : offset + length]

            toc_holder.append(await open_blob_async(read, len(data)))

        trio.run(parse)
        toc = toc_holder[0]
        plain = sum(c.size for c in toc.iter_chunks())
        raw["chunks"] = sum(1 for _ in toc.iter_chunks())
        base_read: float | None = None
        for name, (seconds, served) in fetched.items():
            assert served == plain, f"{name}: served {served} of {plain} bytes"
            speed = served / mib / seconds
            base_read = base_read or speed
            rows.append(
                [
                    f"read: fetch + inflate + verify, {READERS} concurrent, {name}",
                    seconds,
                    "",
                    speed,
                    "",
                    speed / base_read,
                    _load(),
                ]
            )
            raw[f"read {name}"] = {"seconds": seconds, "mib_per_s": speed}
        inflaters: dict[str, Inflate] = {"zlib": _streamed(zlib.decompressobj)}
        if ISAL is not None:
            inflaters["isal_zlib"] = _streamed(ISAL.decompressobj)
        # What the daemon runs on a segment, libdeflate for one whole member: room for the
        # headers after the chunk too, as the daemon gives it.
        inflaters["libdeflate (inflate_gzip_segment)"] = lambda member, limit: inflate_gzip_segment(
            member, limit + _GAP_ROOM
        )
        base_inflate: float | None = None
        for name, inflate in inflaters.items():
            seconds = _inflate_only(data, toc, inflate)
            speed = plain / mib / seconds
            base_inflate = base_inflate or speed
            rows.append(
                [
                    f"inflate only, 1 thread, {name}",
                    seconds,
                    "",
                    speed,
                    "",
                    speed / base_inflate,
                    _load(),
                ]
            )
            raw[f"inflate {name}"] = {"seconds": seconds, "mib_per_s": speed}
    groups = {str(r[0]).split(":", 1)[-1].strip(): {"MiB/s": float(r[3])} for r in rows}
    return report.write(
        "codecs",
        f"Writing and reading {WEIGHTS_MIB} MiB of bf16-like weights: MiB/s of uncompressed bytes",
        [
            "step",
            "seconds",
            "CPU seconds",
            "MiB/s",
            "compressed / tar",
            "x baseline (gzip -6, zlib)",
            "load (1 min)",
        ],
        rows,
        raw,
        groups,
        "MiB/s (uncompressed)",
    )
