"""Range reads through the real CNCF registry in pull-through (proxy) mode, configured in
hosts.toml, with the origin behind a slow link so that the mirror's first fetch of a blob takes
long enough for reads to pile up behind it, as they do on a node."""

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from devstack.fleet import write_hosts_dir
from devstack.images import Blob, build_image, push_image
from devstack.link import LinkEmulator
from devstack.registry import LocalRegistry, Served, free_port
from lazy2dfs import metrics
from lazy2dfs.registry_client import CredentialStore, RegistryClient, SpillArea
from lazy2dfs.registry_client.blobs import BYPASS_SHARE
from tests.support.registry import FAST_RETRY, run

IMAGE = build_image([{"model/w.bin": os.urandom(3 * 1024 * 1024)}])
# A blob a mirror is left to fetch (blobs.WARM_MIN_BYTES), over a second at the emulated link's
# rate (the fast mirror's).
LARGE = build_image([{"model/w.bin": os.urandom(64 * 1024 * 1024)}])
LAYER = IMAGE.layers[0].blob
SIZE = len(LAYER.data)
MBIT = 20  # the blob takes over a second to cross: reads overlap the mirror's first fetch


def reads(size: int) -> list[list[tuple[int, int]]]:
    """Every read a lazy node might have in flight for one blob at once: more than may go
    around a mirror that fetches the blob (``BYPASS_SHARE``)."""
    length = size // 48
    return [[(o, min(length, size - o))] for o in range(0, size, size // 12)] + [[(size - 51, 51)]]


@pytest.fixture(scope="module", autouse=True)
def pushed(registry: LocalRegistry) -> None:
    run(lambda c: push_image(c, f"{registry.host}/fleet/model:v1", IMAGE))
    run(lambda c: push_image(c, f"{registry.host}/fleet/large:v1", LARGE))


def through(registry: LocalRegistry, path: Path, mbit: float) -> Iterator[LocalRegistry]:
    with (
        LinkEmulator(registry.host, mbit, 20) as link,
        LocalRegistry(path, proxy_remote=f"http://{link.host}") as running,
    ):
        yield running


@pytest.fixture
def mirror(registry: LocalRegistry, tmp_path: Path) -> Iterator[LocalRegistry]:
    yield from through(registry, tmp_path / "mirror", MBIT)


@pytest.fixture
def fast_mirror(registry: LocalRegistry, tmp_path: Path) -> Iterator[LocalRegistry]:
    """``LARGE`` takes it over a second to fetch."""
    yield from through(registry, tmp_path / "mirror", 400)


async def node(
    hosts_dir: Path,
    spill: Path,
    ref: str,
    until: Callable[[], bool] | None = None,
    warm_seconds: float = 30.0,
    blob: Blob = LAYER,
) -> None:
    """One node's daemon-wide client with every read of ``reads`` in flight at once; with
    ``until``, the client stays open (up to 30 s) until it holds, as a daemon's does: a
    whole blob goes on streaming after the reads are answered."""

    async def one(client: RegistryClient, ranges: list[tuple[int, int]]) -> None:
        reader = client.blob_reader(ref, blob.digest, len(blob.data))
        assert await reader.read_ranges(ranges) == [blob.data[o : o + n] for o, n in ranges]

    async with RegistryClient(
        hosts_dir=hosts_dir,
        credentials=CredentialStore(),
        retry=FAST_RETRY,
        spill=SpillArea(spill, 1 << 30, 600),
        mirror_warm_seconds=warm_seconds,
    ) as client:
        async with trio.open_nursery() as nursery:
            for ranges in reads(len(blob.data)):
                nursery.start_soon(one, client, ranges)
        with trio.move_on_after(30):
            while until is not None and not until():
                await trio.sleep(0.05)


async def fleet(nodes: int, hosts_dir: Path, tmp_path: Path, ref: str, blob: Blob) -> None:
    """``nodes`` nodes reading ``blob`` at once, each with its own client and spill area."""
    async with trio.open_nursery() as nursery:
        for n in range(nodes):
            spill = tmp_path / f"spill{n}"
            nursery.start_soon(functools.partial(node, hosts_dir, spill, ref, blob=blob))


@pytest.mark.parametrize("nodes", [1, 2])
def test_nodes_cost_the_origin_what_plain_pulls_do_for_a_small_blob(
    registry: LocalRegistry, mirror: LocalRegistry, tmp_path: Path, nodes: int
) -> None:
    hosts_dir = write_hosts_dir(tmp_path / "certs.d", registry.host, mirror.host)
    origin, served = Served(registry), Served(mirror)

    trio.run(fleet, nodes, hosts_dir, tmp_path, f"{registry.host}/fleet/model:v1", LAYER)
    # A plain pull through this mirror costs the origin the blob once for the mirror's own
    # copy and once per client that asks before the mirror holds it: at most nodes + 1.
    assert origin.bytes([LAYER.digest]) <= (nodes + 1) * SIZE * (1 + BYPASS_SHARE)
    # Each node took the blob from the mirror once.
    assert served.bytes([LAYER.digest]) <= nodes * SIZE


# Plain pulls cost the origin 2x and 3x; each whole answer closed costs it what the origin had
# written into the connection by then (2-5 MB here; on a real link, slow start keeps it
# smaller).
@pytest.mark.parametrize(("nodes", "bound"), [(1, 1.5), (2, 2.0)])
def test_nodes_leave_a_large_blob_to_the_mirror_and_cost_the_origin_it_about_once(
    registry: LocalRegistry, fast_mirror: LocalRegistry, tmp_path: Path, nodes: int, bound: float
) -> None:
    hosts_dir = write_hosts_dir(tmp_path / "certs.d", registry.host, fast_mirror.host)
    origin, served = Served(registry), Served(fast_mirror)
    blob = LARGE.layers[0].blob
    size = len(blob.data)

    trio.run(fleet, nodes, hosts_dir, tmp_path, f"{registry.host}/fleet/large:v1", blob)
    # The nodes read ranges from the mirror, so its own copy was complete (and logged).
    assert any(r.status == 206 for r in served.requests() if blob.digest in r.path)
    assert origin.bytes([blob.digest]) <= bound * size
    assert served.bytes([blob.digest]) <= nodes * size


def test_a_mirror_stopped_mid_stream_fails_no_read(
    registry: LocalRegistry, mirror: LocalRegistry, tmp_path: Path
) -> None:
    hosts_dir = write_hosts_dir(tmp_path / "certs.d", registry.host, mirror.host)
    origin = Served(registry)

    def whole_blobs(outcome: str) -> float:
        return float(metrics.WHOLE_BLOBS.labels(outcome)._value.get())

    resumed, kept = whole_blobs("resumed"), whole_blobs("verified")

    def kept_again() -> bool:
        return whole_blobs("verified") > kept

    async def rollout() -> None:
        async with trio.open_nursery() as nursery:
            ref = f"{registry.host}/fleet/model:v1"
            # The whole answer kept at once (no wait for the mirror), then the mirror stopped.
            nursery.start_soon(node, hosts_dir, tmp_path / "spill", ref, kept_again, 0.0)
            await trio.sleep(0.8)  # the mirror is streaming the blob
            await trio.to_thread.run_sync(mirror.stop)

    trio.run(rollout)
    assert metrics.WHOLE_BLOBS.labels("resumed")._value.get() == resumed + 1
    # The mirror's fetch and its copy for us, then the rest of the blob from the origin once.
    assert origin.bytes([LAYER.digest]) <= 3 * SIZE


def test_a_mirror_that_is_down_sends_every_read_to_the_origin(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    hosts_dir = write_hosts_dir(tmp_path / "certs.d", registry.host, down)
    origin = Served(registry)
    trio.run(node, hosts_dir, tmp_path / "spill", f"{registry.host}/fleet/model:v1")
    assert 0 < origin.bytes([LAYER.digest]) <= SIZE
