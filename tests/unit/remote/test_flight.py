"""Readers first, one fetch per segment, and a short memory of deadlines run out — in plain trio."""

import trio
import trio.testing

from lazy2dfs.remote.flight import GAVE_UP_SECONDS, ReaderGate, SingleFlight


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
