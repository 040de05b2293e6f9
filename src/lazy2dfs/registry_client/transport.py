"""One HTTP exchange with a registry endpoint: authorization, redirects, retry classification.

All endpoints share one pooled keep-alive ``httpx.AsyncClient``; an endpoint with its own TLS
settings (custom CA, client certificate, ``skip_verify``) gets its own client, made once,
because httpx binds TLS configuration to a client. Redirects are followed here rather than by
httpx so that the ``Authorization`` header never leaves the registry's host (blob storage gets
pre-signed URLs that must not see our token) and so that an HTTPS registry cannot bounce us to
plain HTTP.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import httpx

from lazy2dfs import metrics
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.auth import Authenticator
from lazy2dfs.registry_client.credentials import CredentialStore
from lazy2dfs.registry_client.errors import RegistryProtocolError, UnauthorizedError
from lazy2dfs.registry_client.hosts import Endpoint, TlsSettings, is_loopback
from lazy2dfs.registry_client.retry import RetryPolicy, check_retryable
from lazy2dfs.registry_client.threaded_http import ThreadedTransport

log = get_logger(__name__)

DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
_MAX_REDIRECTS: Final = 5
# Answers read whole (manifests, tokens, errors) are small; anything larger is refused.
MAX_ANSWER: Final = 8 * 1024 * 1024
_LIMITS: Final = httpx.Limits(max_connections=64, max_keepalive_connections=32)
_USER_AGENT: Final = "lazy2dfs/0.1"


@functools.cache
def _system_tls() -> ssl.SSLContext:
    """The system's CAs, loaded once per process: loading them took 15 ms of every client,
    and a pull makes several (``SyncRegistryClient``)."""
    return httpx.create_ssl_context()


class Transport:
    """Sends requests to registry endpoints; owns the HTTP clients and the authenticator."""

    def __init__(
        self,
        credentials: CredentialStore,
        policy: RetryPolicy,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.policy = policy
        self._timeout = timeout
        self._default = self._new_client(None)
        self._by_tls: dict[TlsSettings, httpx.AsyncClient] = {}
        self.auth = Authenticator(self._default, credentials, policy)

    def _new_client(self, tls: TlsSettings | None) -> httpx.AsyncClient:
        verify = tls.ssl_context() if tls is not None else _system_tls()
        fallback = httpx.AsyncHTTPTransport(verify=verify, limits=_LIMITS)
        return httpx.AsyncClient(
            timeout=self._timeout,
            transport=ThreadedTransport(
                verify,
                self._timeout,
                fallback,
                max_connections=_LIMITS.max_connections or 64,
                keep_alive=_LIMITS.max_keepalive_connections or 32,
            ),
            follow_redirects=False,
            verify=verify,
            # Blob bytes must arrive as stored: their digests and offsets are over those bytes.
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
            event_hooks={"request": [_request_sent], "response": [_response_received]},
        )

    async def aclose(self) -> None:
        for client in [self._default, *self._by_tls.values()]:
            await client.aclose()

    @property
    def closed(self) -> bool:
        return self._default.is_closed

    def _client(self, endpoint: Endpoint | None) -> httpx.AsyncClient:
        if endpoint is None or endpoint.tls.is_default:
            return self._default
        if endpoint.tls not in self._by_tls:
            self._by_tls[endpoint.tls] = self._new_client(endpoint.tls)
        return self._by_tls[endpoint.tls]

    @asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        *,
        endpoint: Endpoint | None,
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """One attempt; yields the response with its body unread and closes it afterwards.

        ``endpoint`` None means a URL outside the registry (a redirect target remembered by
        the caller): no authorization, no endpoint headers. Raises ``RetryableError`` for
        429/5xx and ``UnauthorizedError`` when credentials do not help, so that callers only
        see answers they can act on.
        """
        response = await self._send_authorized(method, url, endpoint, scopes, headers, content)
        try:
            if method in ("GET", "HEAD"):
                response = await self._follow(response, method, endpoint, scopes, headers)
            check_retryable(response, f"{method} {_redacted(url)}")
            yield response
        finally:
            await response.aclose()

    async def _send_authorized(
        self,
        method: str,
        url: str,
        endpoint: Endpoint | None,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None,
        content: bytes | None,
    ) -> httpx.Response:
        client = self._client(endpoint)
        base = dict(endpoint.headers if endpoint else ())
        base.update(headers or {})
        authorization = await self.auth.authorization(endpoint.host, scopes) if endpoint else None
        for first_try in (True, False):
            request = client.build_request(
                method, url, headers=_with_authorization(base, authorization), content=content
            )
            response = await client.send(request, stream=True)
            if response.status_code != 401 or endpoint is None:
                return response
            await response.aclose()
            if not first_try or not await self.auth.challenged(
                endpoint.host, response, scopes, authorization
            ):
                break
            authorization = await self.auth.authorization(endpoint.host, scopes)
        raise UnauthorizedError(f"{method} {_redacted(url)}: registry refused authorization")

    async def _follow(
        self,
        response: httpx.Response,
        method: str,
        endpoint: Endpoint | None,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        for _ in range(_MAX_REDIRECTS):
            location = response.headers.get("location")
            if not response.is_redirect or not location:
                return response
            target = response.url.join(location)
            await response.aclose()
            downgrade = target.scheme == "http" and response.url.scheme == "https"
            if downgrade and not is_loopback(target.netloc.decode()):
                raise RegistryProtocolError(f"refusing redirect from HTTPS to {target.host}")
            same_host = endpoint is not None and target.netloc.decode() == endpoint.host
            client = self._client(endpoint if same_host else None)
            # The Authorization header of the original request is not carried: a redirect
            # to blob storage must not see the registry token. Same-host redirects re-ask.
            authorization = None
            if same_host and endpoint is not None:
                authorization = await self.auth.authorization(endpoint.host, scopes)
            request = client.build_request(
                method, target, headers=_with_authorization(dict(headers or {}), authorization)
            )
            response = await client.send(request, stream=True)
        await response.aclose()
        raise RegistryProtocolError(f"more than {_MAX_REDIRECTS} redirects")

    async def request(
        self,
        method: str,
        url: str,
        *,
        endpoint: Endpoint | None,
        what: str,
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        max_body: int = MAX_ANSWER,
    ) -> httpx.Response:
        """``open`` with the body read, retried as the policy says. At most ``max_body`` bytes
        are read: a hostile registry's 300 MiB answer costs a refusal, not 300 MiB."""

        async def attempt() -> httpx.Response:
            async with self.open(
                method, url, endpoint=endpoint, scopes=scopes, headers=headers, content=content
            ) as response:
                return httpx.Response(
                    response.status_code,
                    headers=response.headers,
                    # A HEAD answer announces the size of a body it does not send (a blob's).
                    content=b""
                    if method == "HEAD"
                    else await read_at_most(response, max_body, what),
                    request=response.request,
                )

        return await self.policy.run(what, attempt, endpoint.host if endpoint else "")


async def read_at_most(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of ``response``, refused (``RegistryProtocolError``) as soon as it is known to
    be longer than ``limit``: from its Content-Length, or while it arrives."""
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise RegistryProtocolError(f"{what}: answer of {announced} bytes refused")
    pieces: list[bytes] = []
    received = 0
    async for piece in response.aiter_bytes():
        received += len(piece)
        if received > limit:
            raise RegistryProtocolError(f"{what}: answer over {limit} bytes refused")
        pieces.append(piece)
    return b"".join(pieces)


_SENT_AT: Final = "lazy2dfs.sent_at"


async def _request_sent(request: httpx.Request) -> None:
    request.extensions[_SENT_AT] = time.perf_counter()


async def _response_received(response: httpx.Response) -> None:
    """Counts and times every answer (token endpoints and redirect targets included). Labels
    name the host only: paths, queries and headers may hold credentials."""
    request = response.request
    host = (
        request.url.host if request.url.port is None else f"{request.url.host}:{request.url.port}"
    )
    metrics.REGISTRY_REQUESTS.labels(host, request.method, str(response.status_code)).inc()
    sent_at = request.extensions.get(_SENT_AT)
    if sent_at is not None:
        metrics.REGISTRY_LATENCY.labels(host, request.method).observe(time.perf_counter() - sent_at)


def _with_authorization(headers: dict[str, str], authorization: str | None) -> dict[str, str]:
    if authorization is None:
        return headers
    return {**headers, "Authorization": authorization}


def _redacted(url: str) -> str:
    """A URL without its query string, which for pre-signed URLs holds a credential."""
    return url.split("?", 1)[0]
