"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens and Basic.

A registry answers 401 with a challenge. For Bearer, a token for the repository scopes
(``repository:<name>:pull`` or ``pull,push``) comes from the challenge's realm, with the
credentials as Basic auth (or an identity token as OAuth2 refresh token). Tokens are cached per
realm, service and scopes until shortly before they expire, and once a host has challenged us
later requests carry the token up front instead of paying a 401 round trip each time.
Concurrent readers needing the same token wait for one fetch.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.credentials import Credentials, CredentialStore
from lazy2dfs.registry_client.errors import RegistryProtocolError, UnauthorizedError
from lazy2dfs.registry_client.retry import RetryPolicy, check_retryable

log = get_logger(__name__)

# The distribution token spec: a token without expires_in lives 60 s.
_DEFAULT_TOKEN_LIFETIME: Final = 60
_CLIENT_ID: Final = "lazy2dfs"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Unquoted values are tokens by the RFC, but registries write bare URLs too; accept up to a comma.
_BARE_VALUE = re.compile(r"[^,\s]+")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic", ...
    params: dict[str, str]


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def parse_www_authenticate(values: Sequence[str]) -> list[Challenge]:
    """All challenges in the ``WWW-Authenticate`` header values (RFC 7235 syntax).

    One value may hold several challenges (``Basic realm="a", Bearer realm="b"``); parameter
    values may be tokens or quoted strings with backslash escapes and commas inside.
    """
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(_parse_one_header(value))
    return challenges


def _parse_one_header(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    position = 0
    current: Challenge | None = None
    while position < len(text):
        position = _skip(text, position, " \t,")
        token = _TOKEN.match(text, position)
        if token is None:
            if position < len(text):
                raise RegistryProtocolError(f"malformed WWW-Authenticate {text!r}")
            break
        after = _skip(text, token.end(), " \t")
        if after < len(text) and text[after] == "=" and current is not None:
            value, position = _param_value(text, _skip(text, after + 1, " \t"))
            current.params[token.group().lower()] = value
        else:
            current = Challenge(token.group().lower(), {})
            challenges.append(current)
            position = token.end()
    return challenges


def _skip(text: str, position: int, characters: str) -> int:
    while position < len(text) and text[position] in characters:
        position += 1
    return position


def _param_value(text: str, position: int) -> tuple[str, int]:
    if position < len(text) and text[position] == '"':
        chars: list[str] = []
        position += 1
        while position < len(text) and text[position] != '"':
            if text[position] == "\\" and position + 1 < len(text):
                position += 1
            chars.append(text[position])
            position += 1
        if position >= len(text):
            raise RegistryProtocolError(f"unterminated quoted string in {text!r}")
        return "".join(chars), position + 1
    bare = _BARE_VALUE.match(text, position)
    if bare is None:
        raise RegistryProtocolError(f"malformed WWW-Authenticate parameter in {text!r}")
    return bare.group(), bare.end()


def basic_authorization(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


@dataclass
class _Token:
    value: str
    renew_at: float  # trio clock


class Authenticator:
    """Knows each host's challenge and the tokens fetched for it."""

    def __init__(
        self, client: httpx.AsyncClient, credentials: CredentialStore, policy: RetryPolicy
    ) -> None:
        self._client = client
        self._credentials = credentials
        self._policy = policy
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._locks: dict[tuple[str, str, tuple[str, ...]], trio.Lock] = {}

    async def authorization(self, host: str, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` value for a request to ``host``, or None to go anonymous."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = await self._lookup(host)
            if credentials is None or not credentials.username:
                raise UnauthorizedError(f"{host} asks for Basic auth and no credentials are set")
            return basic_authorization(credentials)
        return "Bearer " + await self._token(host, challenge, scopes)

    async def challenged(
        self, host: str, response: httpx.Response, scopes: Sequence[str], sent: str | None
    ) -> bool:
        """Learns from a 401; True when asking again with new authorization can help."""
        challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
        usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not usable:
            return False
        challenge = next((c for c in usable if c.scheme == "bearer"), usable[0])
        if sent is not None and sent.startswith("Bearer "):
            self._tokens.pop(self._key(challenge, scopes), None)
        elif sent is not None:
            return False  # Basic credentials were refused; sending them again cannot help
        self._challenges[host] = challenge
        return True

    @staticmethod
    def _key(challenge: Challenge, scopes: Sequence[str]) -> tuple[str, str, tuple[str, ...]]:
        wanted = set(scopes)
        wanted.update(s for s in challenge.params.get("scope", "").split(" ") if s)
        realm, service = challenge.params.get("realm", ""), challenge.params.get("service", "")
        return realm, service, tuple(sorted(wanted))

    async def _lookup(self, host: str) -> Credentials | None:
        return await trio.to_thread.run_sync(self._credentials.lookup, host)

    async def _token(self, host: str, challenge: Challenge, scopes: Sequence[str]) -> str:
        key = self._key(challenge, scopes)
        if not key[0]:
            raise RegistryProtocolError(f"{host}: Bearer challenge without realm")
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and trio.current_time() < cached.renew_at:
                return cached.value
            credentials = await self._lookup(host)
            token, lifetime = await self._policy.run(
                f"token for {host}", lambda: self._fetch(key, credentials)
            )
            # Renew at 90% of the lifetime, so a token never expires in flight.
            self._tokens[key] = _Token(token, trio.current_time() + 0.9 * lifetime)
            log.debug("registry token", host=host, scopes=" ".join(key[2]), lifetime=lifetime)
            return token

    async def _fetch(
        self, key: tuple[str, str, tuple[str, ...]], credentials: Credentials | None
    ) -> tuple[str, float]:
        realm, service, scopes = key
        if credentials is not None and credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": _CLIENT_ID,
                "scope": " ".join(scopes),
            }
            if service:
                form["service"] = service
            response = await self._client.post(realm, data=form)
        else:
            params: list[tuple[str, str | int | float | bool | None]] = [
                ("scope", scope) for scope in scopes
            ]
            if service:
                params.insert(0, ("service", service))
            headers = {}
            if credentials is not None and credentials.username:
                headers["Authorization"] = basic_authorization(credentials)
            response = await self._client.get(realm, params=params, headers=headers)
        check_retryable(response, "token server")
        if response.status_code in (401, 403):
            raise UnauthorizedError(
                f"token server {realm} refused {'anonymous ' if credentials is None else ''}"
                f"access to {' '.join(scopes)}: HTTP {response.status_code}"
            )
        if response.status_code != 200:
            raise RegistryProtocolError(f"token server {realm}: HTTP {response.status_code}")
        return _parse_token_answer(response)


def _parse_token_answer(response: httpx.Response) -> tuple[str, float]:
    try:
        answer = response.json()
        token = answer.get("token") or answer.get("access_token")
        lifetime = int(answer.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError):
        raise RegistryProtocolError("token server answered something other than a token") from None
    if not isinstance(token, str) or not token:
        raise RegistryProtocolError("token server answer has no token")
    return token, float(lifetime)
