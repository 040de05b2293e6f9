"""Hours of pull, run and remove compressed into a bounded test: the daemon ends holding what
it held after the warm-up (descriptors, mounts, threads), and its memory does not grow."""

import os
from collections.abc import Iterator

import pytest

from benchmarks.soak import soak
from devstack.images import build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
FILES = {f"model/part{i}": os.urandom(2 * CHUNK + i) for i in range(4)}
MAX_CYCLES = 30
MAX_SECONDS = 240.0
# The model (8 MiB) fits in the daemon's 64 MiB of decoded chunks, so after the warm-up no
# cycle needs memory the previous one did not; what remains is allocator noise.
RSS_GROWTH_KIB = 16 * 1024
# The gRPC pool grows when containerd's calls overlap more than they did in the warm-up (up to
# 64 threads, never shrinking; see ``Resources``): a few threads, whatever the cycle count.
GRPC_THREAD_GROWTH = 4
DB_FDS_PER_CONNECTION = 2  # the database and its WAL


@pytest.fixture(scope="module")
def soak_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: no other test's containers or layers in what is measured."""
    with private_stack(tmp_path_factory.mktemp("soak"), log_level="warning") as stack:
        yield stack


def test_pull_run_remove_cycles_leak_nothing(soak_stack: Stack) -> None:
    stack = soak_stack
    image = build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(FILES, estargz=ESTARGZ)]
    )
    ref = stack.push("soak/model:v1", image)
    assert stack.snapshotter.process is not None
    roots = [stack.containerd.workdir, stack.snapshotter.workdir]
    result = soak(
        stack.containerd, stack.snapshotter.process.pid, roots, ref, FILES, MAX_CYCLES, MAX_SECONDS
    )
    assert result.cycles >= 10, f"only {result.cycles} cycles in {MAX_SECONDS}s"
    warm, end = result.warm, result.end
    assert end.mounts == warm.mounts
    new_threads = end.threads - warm.threads
    assert 0 <= new_threads <= GRPC_THREAD_GROWTH, f"{result}"
    # Every descriptor but the store's read connections is back to the warm-up count; those
    # are one a thread that has read (a worker may read for the first time after the warm-up)
    # and the writer's: bounded by the threads, which do not grow.
    assert end.fds - end.db_fds == warm.fds - warm.db_fds, f"{result}"
    assert end.db_fds <= DB_FDS_PER_CONNECTION * (end.threads + 1), f"{result}"
    assert end.rss_anon_kib - warm.rss_anon_kib < RSS_GROWTH_KIB, f"{result}"
    # Every image was removed: no layer is left in the FUSE mount or on disk.
    assert os.listdir(stack.snapshotter.root / "fuse") == []
    assert os.listdir(stack.snapshotter.root / "layers") == []
