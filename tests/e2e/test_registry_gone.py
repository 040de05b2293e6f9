"""A registry gone for good: a read of a chunk not fetched yet fails with EIO once the
configured deadline has passed, not later (the kernel asks again after a failed read-ahead),
not much earlier (a registry refusing connections is retried until then), and never hangs."""

import errno
import os
import time
from collections.abc import Iterator

import pytest

from devstack.images import build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.daemon import RANGE_RETRY_MAX_DELAY
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

DEADLINE = 3.0
# Time the kernel and the daemon take beyond the deadline itself, on a busy machine.
SLACK = 1.5
CHUNK = 256 * 1024
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)


@pytest.fixture(scope="module")
def gone_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = f"[fetch]\nbackground = false\ndeadline_seconds = {DEADLINE}\n"
    with private_stack(tmp_path_factory.mktemp("gone"), config=config, proxy=True) as stack:
        yield stack


def test_a_registry_that_never_answers_fails_a_read_once_after_the_deadline(
    gone_stack: Stack,
) -> None:
    stack, proxy = gone_stack, gone_stack.proxy
    assert proxy is not None
    image = build_image(
        [
            build_layer(runtime_tree(), estargz=ESTARGZ),
            build_layer({"model/w.bin": os.urandom(8 * CHUNK)}, estargz=ESTARGZ),
        ]
    )
    stack.push("gone/model:v1", image)
    stack.containerd.lazy_pull(f"{proxy.host}/gone/model:v1")
    (served,) = stack.snapshotter.root.glob("fuse/*/model/w.bin")
    proxy.faults.blackhole = True
    start = time.monotonic()
    with pytest.raises(OSError) as err, open(served, "rb") as file:
        file.read(4096)
    elapsed = time.monotonic() - start
    assert err.value.errno == errno.EIO
    assert DEADLINE <= elapsed < DEADLINE + SLACK


def test_a_registry_that_refuses_connections_is_retried_until_the_deadline_then_eio(
    gone_stack: Stack,
) -> None:
    """Refused connections fail fast, one after another: the read keeps trying (backoff at
    most RANGE_RETRY_MAX_DELAY apart) until its deadline, instead of giving up after a few."""
    stack, proxy = gone_stack, gone_stack.proxy
    assert proxy is not None
    image = build_image([build_layer({"model/r.bin": os.urandom(8 * CHUNK)}, estargz=ESTARGZ)])
    proxy.faults.blackhole = False
    stack.push("gone/refused:v1", image)
    stack.containerd.lazy_pull(f"{proxy.host}/gone/refused:v1")
    (served,) = stack.snapshotter.root.glob("fuse/*/model/r.bin")
    stack.registry.stop()
    start = time.monotonic()
    with pytest.raises(OSError) as err, open(served, "rb") as file:
        file.read(4096)
    elapsed = time.monotonic() - start
    assert err.value.errno == errno.EIO
    assert DEADLINE - RANGE_RETRY_MAX_DELAY <= elapsed < DEADLINE + SLACK
