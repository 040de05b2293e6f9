"""One cold start of a model container, timed: a pull, then a container that reads the first
tensor, then a container that reads all the weights. Shared by `make demo` and the benchmarks,
so the figures they print come from the same procedure."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs.localstack.containerd import LocalContainerd
from lazy2dfs.localstack.model import WEIGHTS_PATH
from lazy2dfs.localstack.process import lazy2dfs_argv

# A method is a snapshotter name; overlayfs is containerd's own full pull.
METHODS = ("overlayfs", "lazy2dfs")


@dataclass(frozen=True)
class ColdStart:
    method: str
    pull: float
    first_read: float  # container start and first tensor read, after the pull
    full_read: float  # a second container reading every byte

    @property
    def to_first_tensor(self) -> float:
        return self.pull + self.first_read


def _timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - start, done.stdout


def cold_start(
    containerd: LocalContainerd, ref: str, method: str, first_tensor_end: int, name: str
) -> ColdStart:
    ctr = ["ctr", "--address", str(containerd.address)]
    if method == "overlayfs":
        pull = [*ctr, "images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref]
    else:
        pull = [*lazy2dfs_argv(), "pull", "--containerd-address", str(containerd.address), ref]
    run = [*ctr, "run", "--rm", "--snapshotter", method, ref]
    pulled, _ = _timed(pull)
    weights = Path("/") / WEIGHTS_PATH
    first, _ = _timed(
        [*run, f"{name}-first", "/bin/sh", "-c", f"head -c {first_tensor_end} {weights} | wc -c"]
    )
    full, _ = _timed([*run, f"{name}-full", "/bin/sh", "-c", f"sha256sum {weights}"])
    return ColdStart(method, pulled, first, full)
