"""The registry client against the real CNCF registry with authentication switched on.

Basic: the registry reads a bcrypt htpasswd file. Bearer: the registry trusts a token server
on 127.0.0.1 (``devstack.auth``) whose JWTs (RS256 and ES256) carry the granted
repository scopes; the token server checks credentials and grants only what it is asked for
and what the user may do, and records every request so the tests can count tokens.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from devstack.auth import (
    HtpasswdAuth,
    TokenIssuer,
    TokenRequest,
    TokenServer,
    parse_scope,
)
from devstack.images import push_image
from devstack.registry import LocalRegistry
from lazy2dfs.logfmt import LogfmtFormatter
from lazy2dfs.registry_client import (
    Credentials,
    CredentialStore,
    RegistryClient,
    UnauthorizedError,
)
from tests.support.registry import FAST_RETRY, sample_image

T = TypeVar("T")

IMAGE = sample_image()
WRITER = "writer"
WRITER_PASSWORD = secrets.token_urlsafe(24)
READER = "reader"
READER_PASSWORD = secrets.token_urlsafe(24)
SECRETS = (WRITER_PASSWORD, READER_PASSWORD)


def _grants(username: str, repository: str) -> Collection[str]:
    """The writer may do anything under team/; the reader may only pull from it."""
    if not repository.startswith("team/"):
        return ()
    return ("pull", "push") if username == WRITER else ("pull",)


def _run(
    host: str, credentials: Credentials | None, call: Callable[[RegistryClient], Awaitable[T]]
) -> T:
    store = CredentialStore(explicit={host: credentials} if credentials else None)

    async def main() -> T:
        async with RegistryClient(credentials=store, retry=FAST_RETRY) as client:
            return await call(client)

    return trio.run(main)


async def _pull_and_check(client: RegistryClient, ref: str) -> None:
    image = await client.get_image(ref)
    assert image.root.digest == IMAGE.root.digest
    assert await client.get_blob(ref, image.manifest.config.digest) == IMAGE.config.data
    for layer, built in zip(image.manifest.layers, IMAGE.layers, strict=True):
        assert await client.get_blob(ref, layer.digest) == built.blob.data
    payload = IMAGE.layers[1].blob
    reader = client.blob_reader(ref, payload.digest, len(payload.data))
    assert await reader.read_range(100, 1000) == payload.data[100:1100]


async def _push_and_pull(client: RegistryClient, ref: str) -> None:
    await push_image(client, ref, IMAGE)
    await _pull_and_check(client, ref)


# --- Basic (htpasswd) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    auth = HtpasswdAuth(WRITER, WRITER_PASSWORD)
    with LocalRegistry(tmp_path_factory.mktemp("basic-registry"), auth=auth) as running:
        yield running


def test_basic_push_and_pull(basic_registry: LocalRegistry) -> None:
    host = basic_registry.host
    before = len(basic_registry.requests())
    _run(host, Credentials(WRITER, WRITER_PASSWORD), lambda c: _push_and_pull(c, f"{host}/a/m:v1"))
    logged = basic_registry.requests()[before:]
    assert len(logged) > 10
    # One challenge, then every request carries the credentials up front.
    assert [r.status for r in logged].count(401) == 1
    assert logged[0].status == 401


def test_basic_anonymous_and_wrong_password_are_refused(basic_registry: LocalRegistry) -> None:
    host = basic_registry.host
    ref = f"{host}/a/anonymous:v1"
    with pytest.raises(UnauthorizedError):
        _run(host, None, lambda c: c.get_manifest(ref))
    with pytest.raises(UnauthorizedError) as refused:
        _run(host, Credentials(WRITER, "not-" + WRITER_PASSWORD), lambda c: c.get_manifest(ref))
    assert WRITER_PASSWORD not in str(refused.value)
    with pytest.raises(UnauthorizedError):
        _run(host, Credentials("nobody", WRITER_PASSWORD), lambda c: push_image(c, ref, IMAGE))


# --- Bearer (token server) ----------------------------------------------------------------


class TokenStack:
    def __init__(self, server: TokenServer, registry: LocalRegistry) -> None:
        self.server = server
        self.registry = registry

    @property
    def host(self) -> str:
        return self.registry.host

    def mark(self) -> int:
        return len(self.server.requests)

    def since(self, mark: int) -> list[TokenRequest]:
        return self.server.requests[mark:]


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def tokens(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenStack]:
    issuer = TokenIssuer(request.param)
    users = {WRITER: WRITER_PASSWORD, READER: READER_PASSWORD}
    with TokenServer(issuer, users, grants=_grants) as server:
        workdir = tmp_path_factory.mktemp(f"token-registry-{request.param}")
        with LocalRegistry(workdir, auth=server.registry_auth()) as registry:
            stack = TokenStack(server, registry)
            _run(
                registry.host,
                Credentials(WRITER, WRITER_PASSWORD),
                lambda c: _push_in_order(
                    c, [f"{registry.host}/team/a:v1", f"{registry.host}/team/b:v1"]
                ),
            )
            yield stack


async def _push_in_order(client: RegistryClient, refs: list[str]) -> None:
    for ref in refs:
        await push_image(client, ref, IMAGE)


def _repositories(requests: list[TokenRequest]) -> set[str]:
    return {parse_scope(scope)[1] for r in requests for scope in r.scopes}


def test_bearer_push_and_pull(tokens: TokenStack) -> None:
    mark = tokens.mark()
    ref = f"{tokens.host}/team/pushed:v1"
    _run(tokens.host, Credentials(WRITER, WRITER_PASSWORD), lambda c: _push_and_pull(c, ref))
    asked = tokens.since(mark)
    assert asked and all(r.status == 200 and r.username == WRITER for r in asked)
    assert _repositories(asked) == {"team/pushed"}
    assert any("push" in r.granted.get("team/pushed", ()) for r in asked)
    # A token is fetched once per distinct set of scopes, then reused.
    assert len(asked) == len({r.scopes for r in asked})
    logged = tokens.registry.requests()
    assert sum(1 for r in logged if "/team/pushed/" in r.path and r.status < 300) > len(asked)


def test_bearer_token_reused_across_pulls(tokens: TokenStack) -> None:
    ref = f"{tokens.host}/team/a:v1"
    counts: list[int] = []

    async def twice(client: RegistryClient) -> None:
        for _ in range(2):
            await _pull_and_check(client, ref)
            counts.append(tokens.mark())

    mark = tokens.mark()
    _run(tokens.host, Credentials(READER, READER_PASSWORD), twice)
    assert counts[0] > mark  # the first pull needed a token
    assert counts[1] == counts[0]  # the second pull reused it


def test_bearer_scopes_per_repository(tokens: TokenStack) -> None:
    """Each repository gets its own scope; the reader's pull-only grant refuses a push."""
    host = tokens.host
    reader = Credentials(READER, READER_PASSWORD)
    for repository in ("team/a", "team/b"):
        mark = tokens.mark()
        _run(host, reader, lambda c, r=repository: _pull_and_check(c, f"{host}/{r}:v1"))  # type: ignore[misc]
        asked = tokens.since(mark)
        assert _repositories(asked) == {repository}
        assert all(r.granted == {repository: ("pull",)} for r in asked)

    mark = tokens.mark()
    with pytest.raises(UnauthorizedError):
        _run(host, reader, lambda c: push_image(c, f"{host}/team/c:v1", IMAGE))
    asked = tokens.since(mark)
    assert asked and all("push" not in r.granted.get("team/c", ()) for r in asked)
    with pytest.raises(UnauthorizedError):  # outside team/: nothing granted, not even pull
        _run(host, reader, lambda c: c.get_manifest(f"{host}/other/x:v1"))


def test_bearer_token_renewed_when_it_expires(tokens: TokenStack) -> None:
    ref = f"{tokens.host}/team/a:v1"
    tokens.server.expires_in = 2
    try:

        async def across_expiry(client: RegistryClient) -> list[int]:
            marks = [tokens.mark()]
            await client.get_manifest(ref)
            marks.append(tokens.mark())
            await client.get_manifest(ref)  # well within the lifetime: cached
            marks.append(tokens.mark())
            await trio.sleep(2.1)
            await client.get_manifest(ref)
            marks.append(tokens.mark())
            return marks

        marks = _run(tokens.host, Credentials(READER, READER_PASSWORD), across_expiry)
    finally:
        tokens.server.expires_in = 300
    assert marks[1] - marks[0] == 1
    assert marks[2] == marks[1]
    assert marks[3] - marks[2] == 1
    assert all(r.status == 200 and r.expires_in == 2 for r in tokens.since(marks[0]))


def test_bearer_wrong_password(tokens: TokenStack) -> None:
    mark = tokens.mark()
    with pytest.raises(UnauthorizedError) as refused:
        _run(
            tokens.host,
            Credentials(READER, "wrong-" + READER_PASSWORD),
            lambda c: c.get_manifest(f"{tokens.host}/team/a:v1"),
        )
    assert READER_PASSWORD not in str(refused.value)
    assert [r.status for r in tokens.since(mark)] == [401]
    with pytest.raises(UnauthorizedError):
        _run(tokens.host, None, lambda c: c.get_manifest(f"{tokens.host}/team/a:v1"))


# --- No secret in any log -----------------------------------------------------------------


def test_credentials_never_logged(
    basic_registry: LocalRegistry, tokens: TokenStack, caplog: pytest.LogCaptureFixture
) -> None:
    basic, bearer = basic_registry.host, tokens.host
    writer = Credentials(WRITER, WRITER_PASSWORD)
    reader = Credentials(READER, READER_PASSWORD)
    failures: list[str] = []
    with caplog.at_level(logging.DEBUG):
        _run(basic, writer, lambda c: _push_and_pull(c, f"{basic}/logs/m:v1"))
        _run(bearer, writer, lambda c: _push_and_pull(c, f"{bearer}/team/logs:v1"))
        _run(bearer, reader, lambda c: _pull_and_check(c, f"{bearer}/team/logs:v1"))
        for host, wrong in (
            (basic, Credentials(WRITER, READER_PASSWORD)),
            (bearer, Credentials(READER, WRITER_PASSWORD)),
        ):
            try:
                _run(host, wrong, lambda c, h=host: c.get_manifest(f"{h}/team/a:v1"))  # type: ignore[misc]
            except UnauthorizedError as err:
                failures.append(repr(err))
    assert len(failures) == 2
    assert any(r.name.startswith("lazy2dfs") for r in caplog.records)  # we did capture ours
    formatter = LogfmtFormatter()
    text = "\n".join(formatter.format(r) + repr(r.__dict__) for r in caplog.records)
    text += "\n".join(failures)
    forbidden = [*SECRETS, *tokens.server.issued]
    for username, password in ((WRITER, WRITER_PASSWORD), (READER, READER_PASSWORD)):
        forbidden.append(base64.b64encode(f"{username}:{password}".encode()).decode())
    leaked = [secret[:6] + "…" for secret in forbidden if secret in text]
    assert not leaked, f"secrets in logs: {leaked}"
    # The registry's own logs hold neither the passwords nor the tokens either.
    for registry in (basic_registry, tokens.registry):
        registry_log = Path(registry.access_log_path).read_text(errors="replace")
        assert not [s for s in forbidden if s in registry_log]


def test_tokens_carry_expiry_and_audience(tokens: TokenStack) -> None:
    """The issued JWTs are what the registry accepted: check the claims we rely on."""
    import json

    token = tokens.server.issued[-1]
    header, claims, _ = (part + "=" * (-len(part) % 4) for part in token.split("."))
    decoded_header = json.loads(base64.urlsafe_b64decode(header))
    decoded = json.loads(base64.urlsafe_b64decode(claims))
    assert decoded_header["alg"] == tokens.server.issuer.algorithm
    assert decoded["aud"] == tokens.server.issuer.service
    assert decoded["iss"] == tokens.server.issuer.issuer
    assert 0 < decoded["exp"] - decoded["iat"] <= 300
    assert decoded["exp"] > time.time() - 60
