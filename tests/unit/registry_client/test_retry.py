import http.server
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import trio

from lazy2dfs import metrics
from lazy2dfs.registry_client import RegistryUnavailableError, RetryPolicy
from lazy2dfs.registry_client.retry import RetryableError, retry_after
from tests.support.registry import http_server


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


@pytest.fixture
def plain_http_server() -> Iterator[str]:
    """A plain HTTP server on loopback: what a registry without TLS is."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Quiet) as host:
        yield host


def _get(url: str, policy: RetryPolicy, host: str) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:

            async def attempt() -> None:
                await client.get(url)

            await policy.run(f"manifest m:v1 from {host}", attempt, host)

    trio.run(main)


def test_https_to_a_plain_http_registry_names_the_cause_and_is_not_retried(
    plain_http_server: str,
) -> None:
    """httpx says only "ConnectError: " here; the user needs to hear what happened."""
    with pytest.raises(RegistryUnavailableError) as err:
        _get(f"https://{plain_http_server}/v2/", RetryPolicy(base_delay=0.001), plain_http_server)
    message = str(err.value)
    assert f"{plain_http_server} answered in plain HTTP to an HTTPS request" in message
    assert "--plain-http" in message and "registry.plain_http" in message
    assert "attempts" not in message
    (failing,) = [h for h in metrics.REGISTRY_HEALTH.items() if h.host == plain_http_server]
    assert failing.failing_since and failing.last_error in message


def test_a_refused_connection_says_nothing_listens_and_recovers_once_answered() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"  # closed: nothing listens there
    with pytest.raises(RegistryUnavailableError) as err:
        _get(f"http://{host}/v2/", RetryPolicy(attempts=2, base_delay=0.001), host)
    assert "gave up after 2 attempts in " in str(err.value)
    assert f"nothing listens at {host} (connection refused)" in str(err.value)
    (failing,) = [h for h in metrics.REGISTRY_HEALTH.items() if h.host == host]
    assert failing.failures == 2 and failing.failing_since

    async def answered() -> None:
        pass

    trio.run(RetryPolicy().run, "x", answered, host)
    (recovered,) = [h for h in metrics.REGISTRY_HEALTH.items() if h.host == host]
    assert recovered.failing_since == 0 and recovered.failures == 2
