"""Hours of use compressed into minutes: pull, run and remove a lazily pulled image again and
again, and compare what the daemon holds (open files, memory, threads, mounts) after a warm-up
with what it holds at the end. A leak of one descriptor or mount per container shows up as a
difference of ``cycles``; shared by the soak test and the reliability benchmark, so the figures
the benchmark prints come from the procedure the test asserts on."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from devstack.containerd import LocalContainerd
from devstack.mounts import mounts_under
from lazy2dfs.errors import UnavailableError

DB_NAME = "metadata.db"  # the daemon's sqlite store under its root, with -wal and -shm
# Trio's idle worker threads exit after 10 s; waiting this long before a measurement makes the
# thread count what the daemon keeps, not what the last cycle happened to leave idle.
SETTLE_SECONDS = 11.0


@dataclass(frozen=True)
class Resources:
    """What a process holds: descriptors, resident memory, threads; and the mounts under the
    stack's directories (containers' overlays, the FUSE mount).

    ``db_fds`` counts the descriptors of the daemon's sqlite store among ``fds``: it keeps one
    read connection (database and WAL: two descriptors) per thread that reads, and the gRPC
    pool adds a thread (up to 64, never removed) when containerd's calls first overlap more
    than before: bounded growth that is not a leak, told apart from one this way."""

    fds: int
    db_fds: int
    rss_kib: int
    # Of it, memory not backed by files: what a leak grows. The rest is library pages, which
    # the first use of a code path after the warm-up brings in once.
    rss_anon_kib: int
    threads: int
    mounts: int


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value.split()[0])
    raise UnavailableError(f"/proc/{pid}/status has no {name}")


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(str(fd.readlink()))
        except OSError:
            continue  # closed meanwhile
    return targets


def measure(pid: int, roots: Sequence[Path]) -> Resources:
    targets = _fd_targets(pid)
    return Resources(
        fds=len(targets),
        db_fds=sum(Path(t).name.startswith(DB_NAME) for t in targets),
        rss_kib=_status_field(pid, "VmRSS"),
        rss_anon_kib=_status_field(pid, "RssAnon"),
        threads=_status_field(pid, "Threads"),
        mounts=len(mounts_under(*roots)),
    )


@dataclass(frozen=True)
class SoakResult:
    warm: Resources  # after the warm-up cycle
    end: Resources
    cycles: int  # after the warm-up
    seconds: float


def cycle(containerd: LocalContainerd, ref: str, files: Mapping[str, bytes], name: str) -> None:
    """One pull, one container reading every file of ``files`` (checked against their
    SHA-256), one removal of the image, which takes its snapshots and FUSE layers with it."""
    sums = {hashlib.sha256(data).hexdigest(): path for path, data in files.items()}
    paths = " ".join(str(PurePosixPath("/", path)) for path in sorted(files))
    out = containerd.lazy_pull(ref)
    if "downloaded" in out and ", 0 downloaded" not in out:
        raise UnavailableError(f"{ref} was not pulled lazily: {out}")
    try:
        read = containerd.ctr(
            "run", "--rm", "--snapshotter", "lazy2dfs", ref, name, "sh", "-c", f"sha256sum {paths}"
        )
    finally:
        # A failed run may leave its task and container; they would hold mounts.
        containerd.ctr("task", "rm", "-f", name, check=False)
        containerd.ctr("containers", "rm", name, check=False)
    seen = {line.split()[0] for line in read.splitlines() if line.strip()}
    if seen != set(sums):
        wrong = sorted(path for digest, path in sums.items() if digest not in seen)
        raise AssertionError(f"cycle {name}: wrong bytes read from {wrong}")
    containerd.ctr("images", "rm", "--sync", ref)


def soak(
    containerd: LocalContainerd,
    daemon_pid: int,
    roots: Sequence[Path],
    ref: str,
    files: Mapping[str, bytes],
    max_cycles: int,
    max_seconds: float,
) -> SoakResult:
    """A warm-up cycle, then up to ``max_cycles`` cycles for at most ``max_seconds``.

    Measured after the warm-up, and again after the last cycle, both after ``SETTLE_SECONDS``
    so the two are taken in the same state."""
    cycle(containerd, ref, files, "soak-warmup")
    time.sleep(SETTLE_SECONDS)
    warm = measure(daemon_pid, roots)
    began = time.monotonic()
    done = 0
    while done < max_cycles and time.monotonic() - began < max_seconds:
        cycle(containerd, ref, files, f"soak-{done}")
        done += 1
    seconds = time.monotonic() - began
    time.sleep(SETTLE_SECONDS)
    return SoakResult(warm, measure(daemon_pid, roots), done, seconds)
