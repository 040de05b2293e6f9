"""Range reads through a pull-through mirror that answers ranges of blobs it does not hold yet
with the whole blob (``tests.support.mirror``), configured in hosts.toml as containerd reads it."""

import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from lazy2dfs.digest import sha256_digest
from lazy2dfs.registry_client import (
    CredentialStore,
    RegistryClient,
    RegistryProtocolError,
    SpillArea,
)
from lazy2dfs.registry_client import blobs as blobs_module
from tests.support.mirror import FakeRegistry
from tests.support.registry import FAST_RETRY

BLOB = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = sha256_digest(BLOB)
# What a lazy reader asks at once: footer, some chunks, read-ahead, background fetch.
READS = [
    [(len(BLOB) - 51, 51)],
    [(0, 4096), (1 << 20, 8192)],
    [(2 << 20, 65536)],
    [(100, 1000), (3 << 20, 17)],
    [(1500, 500_000)],
    [(len(BLOB) - 4096, 4096)],
]


def expected(ranges: list[tuple[int, int]]) -> list[bytes]:
    return [BLOB[o : o + n] for o, n in ranges]


@pytest.fixture
def origin() -> Iterator[FakeRegistry]:
    with FakeRegistry({DIGEST: BLOB}, mirror=False) as running:
        yield running


@pytest.fixture
def mirror() -> Iterator[FakeRegistry]:
    with FakeRegistry({DIGEST: BLOB}, mirror=True) as running:
        yield running


@pytest.fixture
def small_blobs_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaves ``BLOB`` to the mirror to fetch, as blobs of ``WARM_MIN_BYTES`` and more are."""
    monkeypatch.setattr(blobs_module, "WARM_MIN_BYTES", len(BLOB))


def hosts_dir(tmp_path: Path, origin: str, mirrors: list[str]) -> Path:
    directory = tmp_path / "certs.d" / origin
    directory.mkdir(parents=True)
    text = f'server = "http://{origin}"\n'
    for mirror in mirrors:
        text += f'\n[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n'
    (directory / "hosts.toml").write_text(text)
    return directory.parent


def run(
    tmp_path: Path,
    origin: FakeRegistry,
    mirrors: list[str],
    call: Callable[[RegistryClient, str], Awaitable[None]],
    spill_bytes: int = 64 << 20,
    warm_seconds: float = 30.0,
) -> int:
    """Runs ``call`` with a client reading through ``mirrors``; returns the bytes its spill
    area kept at the end. ``warm_seconds`` 0: a mirror's first whole answer is kept."""
    spill = SpillArea(tmp_path / "spill", spill_bytes, idle_seconds=600)
    kept = 0

    async def main() -> None:
        nonlocal kept
        async with RegistryClient(
            hosts_dir=hosts_dir(tmp_path, origin.host, mirrors),
            credentials=CredentialStore(),
            retry=FAST_RETRY,
            spill=spill,
            mirror_warm_seconds=warm_seconds,
        ) as client:
            await call(client, f"{origin.host}/fleet/model")
            kept = spill.size_bytes

    trio.run(main)
    assert spill.size_bytes == 0  # closing the client frees the disk
    return kept


async def read_all_at_once(client: RegistryClient, ref: str, readers: int = 3) -> None:
    """``readers`` readers of the blob (daemon-wide, one client), each with every read of
    ``READS`` in flight at once, as a lazy node sends them."""

    async def one(ranges: list[tuple[int, int]]) -> None:
        reader = client.blob_reader(ref, DIGEST, len(BLOB))
        assert await reader.read_ranges(ranges) == expected(ranges)

    async with trio.open_nursery() as nursery:
        for _ in range(readers):
            for ranges in READS:
                nursery.start_soon(one, ranges)


@pytest.mark.usefixtures("small_blobs_warm")
def test_a_mirror_fetching_the_blob_costs_its_origin_the_blob_about_once(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    kept = run(tmp_path, origin, [mirror.host], read_all_at_once)
    # The mirror's store, and what was in flight of the whole answers closed unread.
    assert mirror.origin_bytes <= 1.25 * len(BLOB)
    assert mirror.whole_answers >= 1
    # Every read came from the mirror's ranges once it held the blob, or (the footer and the
    # last chunk, within the share) from the origin meanwhile.
    assert mirror.sent_bytes + origin.sent_bytes <= 1.25 * len(BLOB)
    assert origin.sent_bytes <= len(BLOB) * blobs_module.BYPASS_SHARE + 4096
    assert kept == 0  # nothing to keep: the mirror serves ranges


@pytest.mark.usefixtures("small_blobs_warm")
def test_a_busy_mirror_that_answers_late_is_not_asked_again_before_it_can_hold_the_blob(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    """A mirror busy with many nodes answers the first request late, and its store (which
    asks the origin as late) holds the blob as much later: asked again at the expected time
    counted from the request, it would answer with the whole blob once more."""
    mirror.answer_delay = 0.4  # holds BLOB ~0.56 s after the request; expected ~0.34 s
    run(tmp_path, origin, [mirror.host], read_all_at_once)
    assert mirror.whole_answers == 1


@pytest.mark.usefixtures("small_blobs_warm")
def test_a_mirror_that_never_serves_ranges_has_its_whole_answer_kept_after_the_wait(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    mirror.rate = 1e6  # 3 s to store the blob: longer than the wait

    async def call(client: RegistryClient, ref: str) -> None:
        began = trio.current_time()
        await read_all_at_once(client, ref, readers=1)
        assert 0.5 <= trio.current_time() - began < 20

    kept = run(tmp_path, origin, [mirror.host], call, warm_seconds=0.5)
    assert kept == len(BLOB)
    assert mirror.sent_bytes >= len(BLOB)  # the whole answer, read through


@pytest.mark.usefixtures("small_blobs_warm")
def test_a_mirror_stopped_while_it_fetches_the_blob_sends_reads_to_the_origin(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    mirror.rate = 2e6  # 1.5 s to store the blob

    async def call(client: RegistryClient, ref: str) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all_at_once, client, ref, 2)
            await trio.sleep(0.3)
            mirror.stop()

    run(tmp_path, origin, [mirror.host], call)
    assert mirror.stopped
    assert origin.gets >= 1


def test_a_small_blob_is_taken_whole_from_the_mirror_at_once(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    """Below ``WARM_MIN_BYTES`` what closed answers cost would exceed a second copy."""
    assert len(BLOB) < blobs_module.WARM_MIN_BYTES
    kept = run(tmp_path, origin, [mirror.host], read_all_at_once)
    assert mirror.whole_answers == 1
    assert kept == len(BLOB)


def test_one_whole_blob_from_the_mirror_serves_every_range(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    kept = run(tmp_path, origin, [mirror.host], read_all_at_once, warm_seconds=0)
    # One request reached the mirror while it did not hold the blob: its origin paid what a
    # plain pull of the blob through it costs (the copy for the request, and its own store).
    assert mirror.gets == 1
    assert mirror.whole_answers == 1
    assert mirror.origin_bytes == 2 * len(BLOB)
    assert mirror.sent_bytes == len(BLOB)
    # Beside it, only ranges far ahead of its stream (the footer) went to the origin.
    assert origin.sent_bytes <= len(BLOB) * blobs_module.BYPASS_SHARE
    assert kept == len(BLOB)  # kept, verified, for later ranges


def test_later_reads_come_from_the_kept_blob_until_released_then_by_range(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    async def call(client: RegistryClient, ref: str) -> None:
        await read_all_at_once(client, ref, readers=1)
        before = mirror.gets
        await read_all_at_once(client, ref, readers=2)
        assert mirror.gets == before  # no request: every range came from disk
        client.blob_reader(ref, DIGEST).release()
        await trio.sleep(len(BLOB) / mirror.rate)  # the mirror's own store is done by now
        await read_all_at_once(client, ref, readers=2)

    kept = run(tmp_path, origin, [mirror.host], call, warm_seconds=0)
    assert kept == 0
    assert mirror.whole_answers == 1
    later = [r for _, _, r in mirror.requests[1:]]
    assert later and all(r.startswith("bytes=") for r in later)
    assert mirror.origin_bytes == 2 * len(BLOB)


def test_a_mirror_stopped_mid_stream_costs_no_read_and_no_byte_twice(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    mirror.cut_after = len(BLOB) // 3

    kept = run(tmp_path, origin, [mirror.host], read_all_at_once, warm_seconds=0)
    assert mirror.stopped
    # The origin sent the rest of the blob, from where the mirror's stream broke, once.
    resumed = [r for _, _, r in origin.requests if r.endswith("-")]
    assert resumed == [f"bytes={len(BLOB) // 3}-"]
    bypass = len(BLOB) * blobs_module.BYPASS_SHARE
    assert origin.sent_bytes <= len(BLOB) - len(BLOB) // 3 + bypass
    assert kept == len(BLOB)


def test_a_mirror_down_from_the_start_sends_reads_to_the_origin(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    mirror.stop()
    run(tmp_path, origin, [mirror.host], read_all_at_once)
    assert origin.gets >= 1
    assert mirror.sent_bytes == 0


def test_a_blob_too_large_to_keep_still_reads_right_without_multiplying_the_origin(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry
) -> None:
    kept = run(
        tmp_path, origin, [mirror.host], read_all_at_once, spill_bytes=len(BLOB) - 1, warm_seconds=0
    )
    assert kept == 0
    # Requests waited for the whole answer instead of asking the mirror again meanwhile.
    assert mirror.whole_answers == 1
    assert mirror.origin_bytes == 2 * len(BLOB)


@pytest.mark.usefixtures("small_blobs_warm")
@pytest.mark.parametrize("warm_seconds", [30.0, 0.0], ids=["mirror fetches", "whole streams"])
def test_a_footer_goes_to_the_origin_and_does_not_wait_for_the_blob(
    tmp_path: Path, origin: FakeRegistry, mirror: FakeRegistry, warm_seconds: float
) -> None:
    """A layer's footer and TOC, at the end of the blob, wait neither for the mirror to fetch
    the blob nor for its whole answer to stream past them."""
    mirror.rate = 2e6  # 1.5 s for the blob
    footer = [(len(BLOB) - 51, 51)]

    async def call(client: RegistryClient, ref: str) -> None:
        reader = client.blob_reader(ref, DIGEST, len(BLOB))
        began = trio.current_time()
        assert await reader.read_ranges(footer) == expected(footer)
        assert trio.current_time() - began < 1.0
        await read_all_at_once(client, ref, readers=1)

    run(tmp_path, origin, [mirror.host], call, warm_seconds=warm_seconds)
    assert origin.requests[0][2] == f"bytes={len(BLOB) - 51}-{len(BLOB) - 1}"
    # The origin paid at most its share for ranges beside the mirror.
    assert origin.sent_bytes <= len(BLOB) * blobs_module.BYPASS_SHARE + 1024 * len(origin.requests)
    if warm_seconds:  # reading the mirror's first whole answer would have cost its origin 2x
        assert mirror.origin_bytes <= 1.5 * len(BLOB)
    else:
        assert mirror.whole_answers == 1


def test_closing_the_client_while_a_whole_blob_streams_is_no_failure(
    tmp_path: Path,
    origin: FakeRegistry,
    mirror: FakeRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A daemon stopping mid-stream drops the spill; nobody is told a blob was not kept."""
    mirror.rate = 2e6  # 1.5 s for the blob

    async def call(client: RegistryClient, ref: str) -> None:
        reader = client.blob_reader(ref, DIGEST, len(BLOB))
        assert await reader.read_ranges([(0, 4096)]) == expected([(0, 4096)])

    with caplog.at_level(logging.INFO, logger="lazy2dfs"):
        kept = run(tmp_path, origin, [mirror.host], call, warm_seconds=0)
    assert kept > 0  # the stream was under way when the client closed
    assert mirror.whole_answers == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_range_answer_longer_than_asked_is_refused_unread(
    tmp_path: Path, origin: FakeRegistry
) -> None:
    """A 206 with the whole blob for a 64-byte range is not read into memory."""

    async def call(client: RegistryClient, ref: str) -> None:
        reader = client.blob_reader(ref, DIGEST)
        assert await reader.read_ranges([(0, 64), (4096, 64)]) == expected([(0, 64), (4096, 64)])
        origin.oversized_ranges = True
        with pytest.raises(RegistryProtocolError, match="refused"):
            await reader.read_range(0, 64)

    run(tmp_path, origin, [], call)
    assert origin.sent_bytes < len(BLOB)


def test_blobs_a_mirror_held_on_time_do_not_make_the_next_one_expected_sooner() -> None:
    """A rollout's blobs, fetched together and found together at the first request, are one
    sign that the mirror was no slower than thought, not one each: the update's blob after
    them must not be asked for before the mirror can hold it (each early request costs the
    origin a copy in flight)."""
    fetches = blobs_module.MirrorFetches()
    size = 50 << 20

    def expected_alone() -> float:
        fetches.start("mirror", "sha256:update", size)
        seconds = fetches.expected("mirror", size)
        fetches.stop("mirror", "sha256:update")
        return seconds

    alone = expected_alone()
    rollout = [f"sha256:{i:064x}" for i in range(4)]
    for digest in rollout:
        fetches.start("mirror", digest, size)
    work = fetches.work("mirror", size)
    took = fetches.expected("mirror", size)
    for digest in rollout:
        fetches.done("mirror", work, 0.0, took, first_try=True)
        fetches.stop("mirror", digest)
    assert expected_alone() >= alone
    # Found late, the next is expected as late; on time again, back to what it was.
    fetches.done("mirror", size, 2 * alone, 4 * alone, first_try=False)
    assert expected_alone() >= 2 * alone
    for _ in range(10):
        fetches.done("mirror", size, 0.0, alone, first_try=True)
    assert expected_alone() == pytest.approx(alone)
