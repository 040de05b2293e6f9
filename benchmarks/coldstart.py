"""One cold start of a model container, timed: a pull, a container that reads the first part
of the first weights file, then a container that reads every weights file to the end. Shared by
`make demo` and the benchmarks, so the figures they print come from the same procedure; the
steps are public too, for benchmarks that time several reads after one pull."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from devstack.containerd import CRI_NAMESPACE, LocalContainerd
from devstack.kubelet import Kubelet
from devstack.model import MODEL_DIR

# A method is how the image gets there: overlayfs is containerd's own full pull (``ctr``),
# lazy2dfs is ``lazy2dfs pull``, cri is CRI's PullImage (kubelet's path) onto lazy2dfs.
METHODS = ("overlayfs", "lazy2dfs")
CRI = "cri"
_SNAPSHOTTER = {"overlayfs": "overlayfs", "lazy2dfs": "lazy2dfs", CRI: "lazy2dfs"}
_NAMESPACE = {"overlayfs": "default", "lazy2dfs": "default", CRI: CRI_NAMESPACE}


@dataclass(frozen=True)
class ColdStart:
    method: str
    pull: float
    first_read: float  # container start and the first read, after the pull
    full_read: float  # a second container reading every weights file

    @property
    def to_first_tensor(self) -> float:
        return self.pull + self.first_read

    @property
    def full_load(self) -> float:
        return self.pull + self.full_read


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def pull(containerd: LocalContainerd, ref: str, method: str) -> float:
    """Seconds to pull ``ref`` for ``method``: ``ctr`` for overlayfs (through the hosts.toml
    files of ``containerd.hosts_dir``), ``lazy2dfs pull``, or CRI's PullImage."""
    if method == CRI:
        start = time.perf_counter()
        with Kubelet(containerd.address, containerd.workdir / "pods") as kubelet:
            kubelet.pull_image(ref)
        return time.perf_counter() - start
    if method == "overlayfs":
        hosts = f"--hosts-dir={containerd.hosts_dir}"
        argv = [*_ctr(containerd), "images", "pull", "--plain-http", hosts]
        argv += ["--snapshotter", method, ref]
        return _timed(argv)
    return _timed(containerd.pull_argv(ref), containerd.pull_env())


def read_first(containerd: LocalContainerd, ref: str, method: str, path: str, size: int) -> float:
    """Seconds for a new container to start and read the first ``size`` bytes of ``path``."""
    script = f"head -c {size} {PurePosixPath('/', path)} | wc -c"
    return _run_script(containerd, ref, method, "first", script)


def read_all(
    containerd: LocalContainerd, ref: str, method: str, paths: Sequence[str] = ()
) -> float:
    """Seconds for a new container to read ``paths`` (default: every weights file) to the end."""
    names = " ".join(str(PurePosixPath("/", p)) for p in paths) or f"/{MODEL_DIR}/*"
    return _run_script(containerd, ref, method, "full", f"cat {names} > /dev/null")


def cold_start(
    containerd: LocalContainerd, ref: str, method: str, first_file: str, first_bytes: int
) -> ColdStart:
    """``first_bytes`` of ``first_file`` (a path in the image) is what "first tensor" reads."""
    pulled = pull(containerd, ref, method)
    first_read = read_first(containerd, ref, method, first_file, first_bytes)
    return ColdStart(method, pulled, first_read, read_all(containerd, ref, method))


def _ctr(containerd: LocalContainerd, method: str = "overlayfs") -> list[str]:
    ctr = containerd.release.binary("ctr")
    return [ctr, "--address", str(containerd.address), "--namespace", _NAMESPACE[method]]


def _run_script(
    containerd: LocalContainerd, ref: str, method: str, name: str, script: str
) -> float:
    snapshotter = _SNAPSHOTTER[method]
    run = [*_ctr(containerd, method), "run", "--rm", "--snapshotter", snapshotter, ref, name]
    return _timed([*run, "/bin/sh", "-c", script])
