"""Readers first, one fetch per segment, work that waits for quiet, and a short memory of
deadlines run out — in plain trio."""

import trio
import trio.testing

from lazy2dfs.remote.flight import GAVE_UP_SECONDS, FetchActivity, ReaderGate, SingleFlight


def test_background_work_resumes_after_overlapping_readers() -> None:
    """Two readers' network waits overlap; the first ends first. The background fetch must run
    again once both are done (with one event replaced per reader, it waited for ever)."""
    resumed: list[float] = []

    async def main() -> None:
        gate = ReaderGate()
        first_done = trio.Event()

        async def reader(hold: float, done: trio.Event | None) -> None:
            with gate.reading():
                await trio.sleep(hold)
            if done is not None:
                done.set()

        async def background() -> None:
            await trio.sleep(0.01)  # the readers are waiting by now
            await gate.wait_idle()
            resumed.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, 1.0, first_done)
            nursery.start_soon(reader, 2.0, None)
            nursery.start_soon(background)
        assert gate.waiting == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(resumed) == 1 and resumed[0] >= 2.0


def test_one_fetch_per_key_and_waiters_wake_on_release() -> None:
    async def main() -> None:
        flights = SingleFlight()
        assert flights.claim("a") is None
        event = flights.claim("a")
        assert event is not None and flights.in_flight("a")
        flights.release("a")
        assert event.is_set() and not flights.in_flight("a")

    trio.run(main)


def test_a_deadline_run_out_is_remembered_briefly() -> None:
    async def main() -> None:
        flights = SingleFlight()
        flights.give_up(["a"])
        assert flights.gave_up_recently("a") and not flights.gave_up_recently("b")
        await trio.sleep(GAVE_UP_SECONDS + 0.1)
        assert not flights.gave_up_recently("a")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_work_that_can_wait_runs_once_fetching_has_been_quiet_or_after_at_most() -> None:
    """A layer's diff ID waits until no fetch has been under way for a while; on a node that
    never stops fetching, it still runs after ``at_most``."""

    async def main() -> None:
        activity = FetchActivity()
        assert await activity.wait_quiet(1.0, 30.0)  # nothing fetched yet: at once
        assert trio.current_time() == 0

        async def fetch(after: float, hold: float) -> None:
            await trio.sleep(after)
            with activity.fetching():
                await trio.sleep(hold)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, 0.0, 2.0)
            nursery.start_soon(fetch, 1.0, 2.0)  # overlaps the first: busy until 3.0
            await trio.sleep(0.5)
            assert activity.quiet_for() == 0
            assert await activity.wait_quiet(1.0, 30.0)
            assert trio.current_time() == 4.0

        async def back_to_back() -> None:
            for _ in range(100):
                with activity.fetching():
                    await trio.sleep(0.9)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(back_to_back)
            await trio.sleep(0.5)
            start = trio.current_time()
            assert not await activity.wait_quiet(1.0, 30.0)
            assert trio.current_time() - start == 30.0
            # Under a deadline 10 s away, the wait leaves half of it to the work.
            with trio.fail_after(10.0):
                start = trio.current_time()
                assert not await activity.wait_quiet(1.0, 30.0)
                assert trio.current_time() - start == 5.0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
