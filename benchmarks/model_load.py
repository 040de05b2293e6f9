"""A model server's start, as the benchmarks time it: new containers that load every tensor of
a safetensors model with safetensors' own loader, and the page cache the model then takes.

The loader runs in the container and installs nothing: this interpreter, its virtualenv (with
safetensors and numpy) and the host's shared libraries are bind-mounted read-only at the
paths they have here, so the image holds only busybox and the model and what is pulled is
the model. The loader memory-maps each ``/model/*.safetensors`` (``safe_open``), asks for
every tensor (``get_tensor``, which copies it out of the mapping, so every byte is read), and
prints when it started, when its first tensor was in memory and when the last one was, by the
clock the host reads (``time.time``), the CPU it used, and which lower directories its root
overlay has.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.containerd import LocalContainerd

LOAD_TIMEOUT = 3600.0

LOADER = """\
import glob, json, resource, time
started = time.time()
from safetensors import safe_open
first = None
tensors = loaded = 0
for path in sorted(glob.glob("/model/*.safetensors")):
    with safe_open(path, framework="numpy") as model:
        for name in model.keys():
            tensor = model.get_tensor(name)
            loaded += tensor.nbytes
            tensors += 1
            first = first or time.time()
            del tensor
ready = time.time()
used = resource.getrusage(resource.RUSAGE_SELF)
lower = ""
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4] == "/":
        options = fields[fields.index("-") + 3].split(",")
        lower = next((o[9:] for o in options if o.startswith("lowerdir=")), "")
print(json.dumps({"started": started, "first": first, "ready": ready, "tensors": tensors,
                  "bytes": loaded, "lower": lower, "cpu": used.ru_utime + used.ru_stime}))
"""


class LoadFailed(Exception):
    """A container did not load the whole model (exit 135 is SIGBUS: a read of the mapped
    file failed)."""


@dataclass(frozen=True)
class Loaded:
    """One container's load, in seconds from the moment the caller gave as the start."""

    started: float  # the loader's first line ran (container and interpreter up)
    first_tensor: float
    ready: float  # every tensor loaded
    tensors: int
    bytes: int
    lowers: tuple[str, ...]  # the container's root overlay lower directories
    cpu: float  # the loader's CPU seconds, its interpreter's start included


def python_mounts() -> list[str]:
    """``ctr run`` options binding this interpreter, its virtualenv and the system libraries
    into a container read-only, at the same paths."""
    sources = {Path(p) for p in (sys.base_prefix, sys.prefix, "/usr", "/lib", "/lib64")}
    options = []
    for source in sorted(sources):
        if source.exists():
            real = source.resolve()
            options += ["--mount", f"type=bind,src={real},dst={source},options=rbind:ro"]
    return options


def load_model(
    containerd: LocalContainerd,
    ref: str,
    snapshotter: str,
    count: int,
    start: float,
    namespace: str = "default",
) -> list[Loaded]:
    """Starts ``count`` containers of ``ref`` (an image in ``namespace``: CRI pulls into
    ``k8s.io``) at once, each loading the whole model; returns when all are done. ``start`` is
    a ``time.time()`` the results count from."""
    prefix = f"load-{os.getpid()}-{time.monotonic_ns()}"
    names = [f"{prefix}-{i}" for i in range(count)]
    base = ["ctr", "--address", str(containerd.address), "--namespace", namespace, "run"]
    runs = [
        subprocess.Popen(
            [
                *base,
                "--rm",
                "--snapshotter",
                snapshotter,
                *python_mounts(),
                ref,
                name,
                sys.executable,
                "-I",
                "-c",
                LOADER,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    outputs: list[tuple[int, str, str]] = []
    try:
        deadline = time.monotonic() + LOAD_TIMEOUT
        for run in runs:
            out, err = run.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append((run.returncode, out, err))
    finally:
        for run, name in zip(runs, names, strict=True):
            if run.poll() is None:  # timed out, or the caller was interrupted
                run.kill()
                run.wait()
                containerd.ctr("task", "rm", "-f", name, namespace=namespace, check=False)
                containerd.ctr("containers", "rm", name, namespace=namespace, check=False)
    failed = [(code, err) for code, out, err in outputs if code != 0 or not out.strip()]
    if failed:
        code, err = failed[0]
        raise LoadFailed(
            f"{len(failed)} of {count} containers failed; the first exited with {code}"
            + (f" (signal {code - 128})" if code > 128 else "")
            + f": {err.strip()[-2000:]}"
        )
    results = []
    for _, out, _ in outputs:
        seen = json.loads(out.strip().splitlines()[-1])
        results.append(
            Loaded(
                started=seen["started"] - start,
                first_tensor=seen["first"] - start,
                ready=seen["ready"] - start,
                tensors=seen["tensors"],
                bytes=seen["bytes"],
                lowers=tuple(seen["lower"].split(":")) if seen["lower"] else (),
                cpu=seen["cpu"],
            )
        )
    return results


class _Range(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class CacheStat(ctypes.Structure):
    """What ``cachestat`` says of a range of a file, in pages."""

    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    )


_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
_CACHESTAT = 451  # the same number on every architecture (Linux 6.5+)


def cache_stat(fd: int, offset: int = 0, length: int = 0) -> CacheStat:
    """The page cache's pages of ``length`` bytes of ``fd`` from ``offset`` (0: to the end)."""
    where = _Range(offset, length)
    found = CacheStat()
    result = _LIBC.syscall(
        ctypes.c_long(_CACHESTAT), ctypes.c_int(fd), ctypes.byref(where), ctypes.byref(found), 0
    )
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cachestat: {os.strerror(err)} (needs Linux 6.5 or later)")
    return found


def _cached_pages(fd: int) -> int:
    return int(cache_stat(fd).nr_cache)


def page_cache_bytes(roots: Iterable[Path]) -> int:
    """Bytes of the page cache that hold regular files under ``roots`` (FUSE mounts below
    them included), each file once however many links or paths it has. Asked per file
    (``cachestat``), so what other work on the machine caches meanwhile is not counted."""
    seen: set[tuple[int, int]] = set()
    pages = 0
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue  # removed meanwhile (a container's, a temporary file)
                try:
                    pages += _cached_pages(fd)
                finally:
                    os.close(fd)
    return pages * mmap.PAGESIZE


def lowers_under(loaded: Sequence[Loaded], prefix: Path) -> int:
    """How many of the first container's lower directories are below ``prefix``."""
    return sum(Path(lower).is_relative_to(prefix) for lower in loaded[0].lowers)
