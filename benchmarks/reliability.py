"""Reliability figures: what a reader of lazily pulled weights sees when things go wrong.

One private stack (registry, fault proxy, containerd 1.6, ``lazy2dfs serve``) on loopback, and
a list of sections run in turn, each returning its rows:

- registry faults: for each kind the fault proxy injects, reads of chunks not fetched yet,
  each checked byte for byte against the source; faults injected, reads, failed reads, wrong
  bytes (which must be 0: a fault may fail a read, never corrupt one);
- a registry gone for good: seconds until a read fails with EIO, against the configured
  ``fetch.deadline_seconds``, for a registry that never answers and one that refuses;
- the chunk cache after reading more than its configured ``cache.max_bytes``;
- a soak (``benchmarks.soak``): the daemon's descriptors, memory, threads and mounts after a
  warm-up and after the last of many pull/run/remove cycles.

A section is a function of the running ``Stack``; adding one is adding it to ``SECTIONS``. Each
leaves the stack as it found it (no fault armed, the registry serving).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy

from benchmarks import report
from benchmarks.soak import soak
from devstack import faults as fault_kinds
from devstack.containerd import LocalContainerd
from devstack.faults import FaultProxy, Faults
from devstack.images import build_image, build_layer
from devstack.model import bf16_like, runtime_tree
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.estargz import WriterOptions

CHUNK = 256 * 1024
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
DEADLINE_SECONDS = 5.0
CACHE_LIMIT = 16 << 20
CONFIG = f"""\
[fetch]
background = false
deadline_seconds = {DEADLINE_SECONDS}
[cache]
max_bytes = {CACHE_LIMIT}
"""
READS_PER_KIND = 12
VERIFICATION_FAILED = 'event="chunk verification failed"'
FETCH_FAILED = 'event="fetch failed"'  # a range request failed after the client's retries
READ_BYTES = 4096  # one page
STALL_SECONDS = 1.0
CACHE_READ_BYTES = 3 * CACHE_LIMIT
SOAK_CYCLES = 30
SOAK_SECONDS = 240.0
SOAK_FILES = 4
SOAK_FILE_BYTES = 2 << 20
MIB = 1 << 20

Row = list[Any]  # section, case, figure, value, bound


@dataclass
class Stack:
    registry: LocalRegistry
    proxy: FaultProxy
    snapshotter: LocalSnapshotter
    containerd: LocalContainerd
    work: Path
    images: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    def push(self, files: Mapping[str, bytes], registry: LocalRegistry | None = None) -> str:
        """Pushes an eStargz image of ``files`` (a busybox layer under it) to ``registry``
        (default: the shared one); returns its reference through the proxy."""
        target = registry or self.registry
        self.images += 1
        path = f"reliability/m{self.images}:v1"
        image = build_image(
            [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(files, estargz=ESTARGZ)]
        )
        target.push(path, image)
        return f"{self.proxy.host if registry is None else target.host}/{path}"

    def pull(self, ref: str) -> None:
        out = self.containerd.lazy_pull(ref)
        if ", 0 downloaded" not in out:
            raise RuntimeError(f"{ref} was not pulled lazily: {out}")

    def logged(self, event: str) -> int:
        """How many lines of the daemon's log hold ``event``."""
        return (self.snapshotter.workdir / "lazy2dfs.log").read_text().count(event)

    def served(self, name: str) -> Path:
        """The file ``name`` of a lazily pulled layer, as the daemon's FUSE mount serves it."""
        (path,) = self.snapshotter.root.glob(f"fuse/*/{name}")
        return path


@dataclass
class Reads:
    attempted: int = 0
    failed: int = 0
    wrong_bytes: int = 0

    def read(self, fd: int, source: bytes, offset: int, length: int) -> None:
        """One read, checked against ``source``; a short read counts its missing bytes."""
        self.attempted += 1
        try:
            data = os.pread(fd, length, offset)
        except OSError:
            self.failed += 1
            return
        expected = source[offset : offset + length]
        if data != expected:
            common = min(len(data), len(expected))
            differ = numpy.frombuffer(data[:common], numpy.uint8) != numpy.frombuffer(
                expected[:common], numpy.uint8
            )
            self.wrong_bytes += int(differ.sum()) + len(expected) - common


def _arm(faults: Faults, kind: str) -> None:
    """One fault of ``kind`` for the next request (of the blob, for body faults)."""
    if kind == fault_kinds.RESET:
        faults.reset_next = 1
    elif kind == fault_kinds.STALL:
        faults.stall_next = 1
    elif kind == fault_kinds.SERVER_ERROR:
        faults.fail_next = [503]
    elif kind == fault_kinds.TOO_MANY:
        faults.fail_next = [429]
    elif kind == fault_kinds.TRUNCATED:
        faults.truncate_next = 1
    elif kind == fault_kinds.CORRUPTED:
        faults.corrupt_next = 1
    elif kind == fault_kinds.EXPIRED_TOKEN:
        faults.expire_tokens()
    elif kind == fault_kinds.EXPIRED_REDIRECT:
        faults.expire_redirects()


FAULT_KINDS = (
    fault_kinds.RESET,
    fault_kinds.STALL,
    fault_kinds.SERVER_ERROR,
    fault_kinds.TOO_MANY,
    fault_kinds.TRUNCATED,
    fault_kinds.CORRUPTED,
    fault_kinds.EXPIRED_TOKEN,
    fault_kinds.EXPIRED_REDIRECT,
)


def registry_faults(stack: Stack) -> list[Row]:
    """Per kind, fresh model files of one chunk each (none cached), one page read of each,
    one fault armed before each read: the read's own range request meets it.

    One chunk a file, because the daemon fetches ahead for a file read sequentially, and a
    failed read looks sequential: the kernel asks again for the page a failed read did not
    get, and that request (meeting no fault) is how a read survives a corrupted chunk, which
    the daemon refuses (counted from its log) and does not fetch again itself."""
    faults = stack.proxy.faults
    faults.stall_seconds = STALL_SECONDS
    faults.retry_after = "1"
    rows: list[Row] = []
    rng = random.Random(7)
    for n, kind in enumerate(FAULT_KINDS):
        slug = kind.replace(" ", "-")
        files = {
            f"model/{slug}/{i}.bin": bf16_like(CHUNK, seed=1000 * n + i)
            for i in range(READS_PER_KIND)
        }
        faults.require_bearer = kind == fault_kinds.EXPIRED_TOKEN
        faults.redirect_blobs = kind == fault_kinds.EXPIRED_REDIRECT
        stack.pull(stack.push(files))
        before = faults.injected[kind]
        refused_before, failed_before = (
            stack.logged(VERIFICATION_FAILED),
            stack.logged(FETCH_FAILED),
        )
        reads = Reads()
        try:
            for name in rng.sample(sorted(files), len(files)):
                fd = os.open(stack.served(name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead
                    _arm(faults, kind)
                    reads.read(fd, files[name], rng.randrange(CHUNK - READ_BYTES), READ_BYTES)
                finally:
                    os.close(fd)
        finally:
            faults.disarm()
        injected = faults.injected[kind] - before
        refused = stack.logged(VERIFICATION_FAILED) - refused_before
        fetches_failed = stack.logged(FETCH_FAILED) - failed_before
        stack.raw.setdefault("faults", {})[kind] = {
            "injected": injected,
            "reads": reads.attempted,
            "failed": reads.failed,
            "wrong_bytes": reads.wrong_bytes,
            "refused_chunks": refused,
            "fetches_failed": fetches_failed,
        }
        rows += [
            ["registry faults", kind, "faults injected", injected, ""],
            ["registry faults", kind, "reads attempted", reads.attempted, ""],
            ["registry faults", kind, "reads failed (EIO)", reads.failed, ""],
            ["registry faults", kind, "fetches failed after retries", fetches_failed, ""],
            ["registry faults", kind, "chunks refused by verification", refused, ""],
            ["registry faults", kind, "wrong bytes served", reads.wrong_bytes, "0"],
        ]
    faults.require_bearer = faults.redirect_blobs = False
    faults.retry_after = None
    return rows


def _time_to_failure(stack: Stack, name: str) -> tuple[float, bool]:
    """Seconds a read of a chunk not fetched yet takes to return, and whether it failed."""
    start = time.monotonic()
    try:
        with open(stack.served(name), "rb") as file:
            file.read(READ_BYTES)
    except OSError:
        return time.monotonic() - start, True
    return time.monotonic() - start, False


def registry_gone(stack: Stack) -> list[Row]:
    """A registry that accepts connections and never answers (behind a proxy of its own), and
    one whose process is gone (connection refused): the read fails with EIO, in time."""
    rows: list[Row] = []
    with FaultProxy(stack.registry.host) as silent:
        ref = stack.push({"model/silent.bin": bf16_like(4 * CHUNK, seed=1)})
        stack.pull(ref.replace(stack.proxy.host, silent.host))
        silent.faults.blackhole = True
        seconds, failed = _time_to_failure(stack, "model/silent.bin")
    rows.append(
        ["registry gone", "never answers", "seconds to EIO", seconds, f"~{DEADLINE_SECONDS:g}"]
    )
    rows.append(["registry gone", "never answers", "read failed", failed, True])
    with LocalRegistry(stack.work / "gone") as gone:
        ref = stack.push({"model/refused.bin": bf16_like(4 * CHUNK, seed=2)}, registry=gone)
        stack.pull(ref)
        gone.stop()
        seconds, failed = _time_to_failure(stack, "model/refused.bin")
    rows.append(["registry gone", "refuses", "seconds to EIO", seconds, f"<= {DEADLINE_SECONDS:g}"])
    rows.append(["registry gone", "refuses", "read failed", failed, True])
    stack.raw["registry_gone"] = {"deadline_seconds": DEADLINE_SECONDS, "rows": rows}
    return rows


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cache_limit(stack: Stack) -> list[Row]:
    """Reads three times the cache's limit of model bytes (every byte checked); the cache on
    disk stays within its limit."""
    files = {f"model/big-{n}.bin": bf16_like(CACHE_READ_BYTES // 4, seed=200 + n) for n in range(4)}
    stack.pull(stack.push(files))
    reads = Reads()
    for name, source in files.items():
        fd = os.open(stack.served(name), os.O_RDONLY)
        try:
            for offset in range(0, len(source), MIB):
                reads.read(fd, source, offset, MIB)
        finally:
            os.close(fd)
    size = _tree_bytes(stack.snapshotter.root / "cache")
    stack.raw["cache"] = {
        "limit": CACHE_LIMIT,
        "read": CACHE_READ_BYTES,
        "size": size,
        "reads": reads.attempted,
        "failed": reads.failed,
        "wrong_bytes": reads.wrong_bytes,
    }
    return [
        ["chunk cache", "limit", "MiB configured (cache.max_bytes)", CACHE_LIMIT / MIB, ""],
        ["chunk cache", "after reading", "MiB read", CACHE_READ_BYTES / MIB, ""],
        ["chunk cache", "after reading", "MiB on disk", size / MIB, f"<= {CACHE_LIMIT / MIB:g}"],
        ["chunk cache", "after reading", "reads failed", reads.failed, "0"],
        ["chunk cache", "after reading", "wrong bytes served", reads.wrong_bytes, "0"],
    ]


def soak_figures(stack: Stack) -> list[Row]:
    """``benchmarks.soak``: what the daemon holds after a warm-up and after the last cycle."""
    files = {
        f"model/soak-{n}.bin": bf16_like(SOAK_FILE_BYTES, seed=300 + n) for n in range(SOAK_FILES)
    }
    ref = stack.push(files)
    assert stack.snapshotter.process is not None
    roots = [stack.containerd.workdir, stack.snapshotter.workdir]
    result = soak(
        stack.containerd,
        stack.snapshotter.process.pid,
        roots,
        ref,
        files,
        SOAK_CYCLES,
        SOAK_SECONDS,
    )
    case = f"{result.cycles} cycles, {result.seconds:.0f} s"
    warm, end = result.warm, result.end
    stack.raw["soak"] = {
        "cycles": result.cycles,
        "seconds": result.seconds,
        "warm": vars(warm),
        "end": vars(end),
    }
    return [
        ["soak", case, "open files: warm-up, end", f"{warm.fds}, {end.fds}", "equal"],
        ["soak", case, "of them sqlite: warm-up, end", f"{warm.db_fds}, {end.db_fds}", ""],
        ["soak", case, "threads: warm-up, end", f"{warm.threads}, {end.threads}", ""],
        ["soak", case, "mounts: warm-up, end", f"{warm.mounts}, {end.mounts}", "equal"],
        [
            "soak",
            case,
            "RSS MiB: warm-up, end",
            f"{warm.rss_kib / 1024:.1f}, {end.rss_kib / 1024:.1f}",
            "",
        ],
        [
            "soak",
            case,
            "of it anonymous: warm-up, end",
            f"{warm.rss_anon_kib / 1024:.1f}, {end.rss_anon_kib / 1024:.1f}",
            "+16 at most",
        ],
    ]


SECTIONS: tuple[Callable[[Stack], list[Row]], ...] = (
    registry_faults,
    registry_gone,
    cache_limit,
    soak_figures,
)


@contextmanager
def _stack(work: Path) -> Iterator[Stack]:
    with ExitStack() as running:
        registry = running.enter_context(LocalRegistry(work / "r"))
        proxy = running.enter_context(FaultProxy(registry.host))
        daemon = running.enter_context(
            LocalSnapshotter(work / "s", config=CONFIG, log_level="warning")
        )
        containerd = running.enter_context(LocalContainerd(work / "c", daemon.address))
        yield Stack(registry, proxy, daemon, containerd, work)


def run() -> Path:
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="l2d-rel-") as tmp, _stack(Path(tmp)) as stack:
        for section in SECTIONS:
            rows += section(stack)
        raw = stack.raw
    raw["seconds"] = time.monotonic() - started
    faults = raw["faults"]
    plot = {
        kind: {"faults injected": f["injected"], "reads failed": f["failed"]}
        for kind, f in faults.items()
    }
    return report.write(
        "reliability",
        "Reliability: registry faults, a registry gone, the cache limit, a soak",
        ["section", "case", "figure", "value", "bound"],
        rows,
        raw,
        plot,
        f"count (of {READS_PER_KIND} reads per kind)",
    )
