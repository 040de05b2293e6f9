"""Retrying what a registry may answer better a moment later.

Connection errors, timeouts, 429 and 5xx are retried with jittered exponential backoff (the
jitter keeps many lazy readers from hammering a recovering registry in step), honouring
``Retry-After``. Both the number of attempts and the time spent are bounded, so a dead registry
turns into ``RegistryUnavailableError`` instead of a hung FUSE read. Anything else (4xx, digest
mismatches, a TLS handshake with a plain HTTP server or an untrusted certificate) is not
retried: repeating it cannot help.

Every failed attempt and every answer is recorded per host (``metrics.REGISTRY_HEALTH``), so
that the daemon shows a failing registry while its readers still wait on retries.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, TypeVar

import httpx
import trio

from lazy2dfs import metrics
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.errors import (
    RegistryUnavailableError,
    explain_transport_error,
    is_tls_mismatch,
)

log = get_logger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# Who the current task's registry requests are for (layer, image): the lazy reader knows, the
# registry client does not, and a retry's log line should say.
_requester: ContextVar[Mapping[str, Any]] = ContextVar(
    "lazy2dfs_registry_requester", default=MappingProxyType({})
)


@contextmanager
def on_behalf_of(**fields: str) -> Iterator[None]:
    """Names ``fields`` (e.g. ``layer=``, ``image=``) in retry logs of requests made inside."""
    token = _requester.set(MappingProxyType(fields))
    try:
        yield
    finally:
        _requester.reset(token)


class RetryableError(Exception):
    """Raised inside an attempt to ask for another one; ``retry_after`` in seconds if known."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int | None = 5  # None: as many as the budget allows
    base_delay: float = 0.05
    max_delay: float = 5.0
    budget: float = 60.0  # seconds from the first attempt after which no new attempt starts

    def backoff(self, failures: int) -> float:
        """Delay after ``failures`` failed attempts: half fixed, half random."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(failures - 1, 32))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    async def run(self, what: str, attempt: Callable[[], Awaitable[T]], host: str = "") -> T:
        """Awaits ``attempt()`` until it returns, fails for good, or the bounds are hit.
        ``host``: the registry host the attempts go to, whose failures are recorded."""
        started = trio.current_time()
        failures = 0
        while True:
            failures += 1
            try:
                result = await attempt()
            except RetryableError as err:
                reason, delay, cause = str(err), err.retry_after, "status"
            except httpx.TransportError as err:
                reason, delay, cause = explain_transport_error(err), None, "network"
                if is_tls_mismatch(err):
                    _failed(host, reason)
                    raise RegistryUnavailableError(f"{what}: {reason}") from err
            except Exception:
                _answered(host)  # a 4xx, a digest mismatch: the registry is there
                raise
            else:
                _answered(host)
                return result
            _failed(host, reason)
            if self.attempts is not None and failures >= self.attempts:
                break
            delay = self.backoff(failures) if delay is None else delay
            if trio.current_time() + delay - started > self.budget:
                reason += f" (next try in {delay:.1f}s would exceed the {self.budget:g}s budget)"
                break
            metrics.REGISTRY_RETRIES.labels(cause).inc()
            log.info(
                "registry retry",
                **_requester.get(),
                what=what,
                attempt=failures,
                reason=reason,
                delay=delay,
            )
            await trio.sleep(delay)
        spent = trio.current_time() - started
        raise RegistryUnavailableError(
            f"{what}: gave up after {failures} attempts in {spent:.1f}s: {reason}"
        )


def _failed(host: str, reason: str) -> None:
    if host:
        metrics.REGISTRY_HEALTH.failed(host, reason)


def _answered(host: str) -> None:
    if host:
        metrics.REGISTRY_HEALTH.answered(host)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def check_retryable(response: httpx.Response, what: str) -> None:
    """Turns a 429/5xx answer into ``RetryableError``."""
    if response.status_code in RETRY_STATUSES:
        raise RetryableError(
            f"{what}: HTTP {response.status_code}", retry_after(response.headers.get("retry-after"))
        )
