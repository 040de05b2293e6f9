"""Twenty containers reading one lazily pulled model at once: each reads every byte right, and
the registry serves each byte of the model's layer once (single flight across containers).

The registry is reached through the fault proxy with no faults armed: it records every
request's ``Range`` header, which the registry's own access log does not."""

import hashlib
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.faults import FaultProxy
from devstack.images import build_image, build_layer
from devstack.model import runtime_tree, sample_model
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

CONTAINERS = 20
CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
MODEL = sample_model(32, files=4, layers=8)
READ_TIMEOUT = 300.0
# Every container waits for /out/go, so that all twenty read at the same moment.
READER = """set -e
while [ ! -e /out/go ]; do sleep 0.05; done
sha256sum /model/* > /out/$NAME.tmp
mv /out/$NAME.tmp /out/$NAME
"""
_RANGE = re.compile(r"(\d+)-(\d+)")


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Background fetch off: every chunk is fetched because a container read it."""
    work = tmp_path_factory.mktemp("load")
    with private_stack(work, config="[fetch]\nbackground = false\n", proxy=True) as stack:
        yield stack


def fetched_ranges(proxy: FaultProxy, digest: str) -> list[tuple[int, int]]:
    """Inclusive byte ranges of every GET of the blob, as the registry was asked for them."""
    ranges = []
    for seen in proxy.faults.registry_requests(f"/blobs/{digest}"):
        if seen.method == "GET":
            wanted = seen.headers.get("Range", "")
            assert wanted, f"a GET of the whole blob {digest}"
            ranges += [(int(a), int(b)) for a, b in _RANGE.findall(wanted)]
    return sorted(ranges)


def test_twenty_containers_read_one_model_at_once_and_each_byte_is_fetched_once(
    load_stack: Stack, tmp_path: Path
) -> None:
    stack, proxy = load_stack, load_stack.proxy
    assert proxy is not None
    image = build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(MODEL.files, estargz=ESTARGZ)]
    )
    stack.push("load/model:v1", image)
    ref = f"{proxy.host}/load/model:v1"  # the daemon fetches through the recording proxy
    assert ", 0 downloaded" in stack.containerd.lazy_pull(ref)
    model = image.layers[1].blob

    out = tmp_path / "out"
    out.mkdir()
    bind = f"type=bind,src={out},dst=/out,options=rbind:rw"
    names = [f"reader-{n}" for n in range(CONTAINERS)]
    try:
        for name in names:
            stack.ctr(
                "run", "-d", "--snapshotter", "lazy2dfs", "--mount", bind, "--env", f"NAME={name}",
                ref, name, "sh", "-c", READER,
            )  # fmt: skip
        (out / "go").touch()
        deadline = time.monotonic() + READ_TIMEOUT
        while not all((out / name).exists() for name in names):
            assert time.monotonic() < deadline, f"readers not done in {READ_TIMEOUT}s"
            time.sleep(0.1)
    finally:
        for name in names:
            stack.containerd.ctr("task", "rm", "-f", name, check=False)
            stack.containerd.ctr("containers", "rm", name, check=False)

    expected = {f"/{path}": hashlib.sha256(data).hexdigest() for path, data in MODEL.files.items()}
    for name in names:
        sums = {path: digest for digest, path in (line.split() for line in (out / name).open())}
        assert sums == expected, f"{name} read wrong bytes"

    ranges = fetched_ranges(proxy, model.digest)
    overlaps = [(a, b) for a, b in itertools.pairwise(ranges) if b[0] <= a[1]]
    assert not overlaps, f"bytes of the model layer fetched twice: {overlaps[:5]}"
    fetched = sum(end - start + 1 for start, end in ranges)
    assert fetched <= len(model.data)
    # The registry's own log agrees: no more bytes of the blob left it than the blob has.
    served = [r for r in stack.registry.requests() if r.path.endswith(f"/blobs/{model.digest}")]
    assert sum(r.size for r in served if r.method == "GET") == fetched
