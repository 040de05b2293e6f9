from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import trio

from lazy2dfs.registry_client import RegistryUnavailableError, RetryPolicy
from lazy2dfs.registry_client.retry import RetryableError, retry_after


def test_retry_after() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = retry_after(later)
    assert value is not None and 25 < value <= 30


def test_backoff_grows_with_jitter_and_cap() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 1.0)]:
        delay = policy.backoff(failures)
        assert ceiling / 2 <= delay <= ceiling


def test_gives_up_after_attempts() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused")

    policy = RetryPolicy(attempts=3, base_delay=0.001)
    with pytest.raises(RegistryUnavailableError, match=r"3 attempts.*refused"):
        trio.run(policy.run, "x", flaky)
    assert calls == 3


def test_succeeds_after_transient_failures_and_honours_retry_after() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RetryableError("429", retry_after=0.2)
        return "ok"

    async def main() -> float:
        start = trio.current_time()
        assert await RetryPolicy().run("x", flaky) == "ok"
        return trio.current_time() - start

    assert trio.run(main) >= 0.4


def test_budget_stops_long_waits() -> None:
    async def slow() -> str:
        raise RetryableError("503", retry_after=100)

    with pytest.raises(RegistryUnavailableError, match="budget"):
        trio.run(RetryPolicy(budget=5).run, "x", slow)


def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("no")

    with pytest.raises(ValueError):
        trio.run(RetryPolicy().run, "x", broken)
    assert calls == 1
