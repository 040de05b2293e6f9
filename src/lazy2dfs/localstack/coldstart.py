"""One cold start of a model container, timed: a pull, a container that reads the first part
of the first weights file, then a container that reads every weights file to the end. Shared by
`make demo` and the benchmarks, so the figures they print come from the same procedure."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

from lazy2dfs.localstack.containerd import LocalContainerd
from lazy2dfs.localstack.model import MODEL_DIR
from lazy2dfs.localstack.process import lazy2dfs_argv

# A method is a snapshotter name; overlayfs is containerd's own full pull.
METHODS = ("overlayfs", "lazy2dfs")


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


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def cold_start(
    containerd: LocalContainerd, ref: str, method: str, first_file: str, first_bytes: int
) -> ColdStart:
    """``first_bytes`` of ``first_file`` (a path in the image) is what "first tensor" reads."""
    ctr = ["ctr", "--address", str(containerd.address)]
    if method == "overlayfs":
        pull = [*ctr, "images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref]
    else:
        pull = [*lazy2dfs_argv(), "pull", "--containerd-address", str(containerd.address), ref]
    run = [*ctr, "run", "--rm", "--snapshotter", method, ref]
    pulled = _timed(pull)
    first = PurePosixPath("/", first_file)
    script = f"head -c {first_bytes} {first} | wc -c"
    first_read = _timed([*run, "first", "/bin/sh", "-c", script])
    full_read = _timed([*run, "full", "/bin/sh", "-c", f"cat /{MODEL_DIR}/* > /dev/null"])
    return ColdStart(method, pulled, first_read, full_read)
