import base64
from collections.abc import Callable

import httpx
import pytest
import trio

from lazy2dfs.registry_client import Credentials, CredentialStore, RetryPolicy, UnauthorizedError
from lazy2dfs.registry_client.auth import (
    Authenticator,
    Challenge,
    parse_www_authenticate,
    pull_scope,
    push_scope,
)


def test_docker_hub_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert parse_www_authenticate([header]) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]


def test_several_challenges_quotes_and_escapes() -> None:
    header = 'Basic realm="a, \\"b\\"", BEARER realm=https://t/x , error=invalid_token'
    assert parse_www_authenticate([header, "Negotiate"]) == [
        Challenge("basic", {"realm": 'a, "b"'}),
        Challenge("bearer", {"realm": "https://t/x", "error": "invalid_token"}),
        Challenge("negotiate", {}),
    ]


def test_scopes() -> None:
    assert pull_scope("a/b") == "repository:a/b:pull"
    assert push_scope("a/b") == "repository:a/b:pull,push"


class TokenServer:
    """httpx MockTransport answering token requests and recording them."""

    def __init__(self, lifetime: int | None = 300) -> None:
        self.requests: list[httpx.Request] = []
        self.lifetime = lifetime

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") == "Basic " + base64.b64encode(b"u:bad").decode():
            return httpx.Response(401)
        answer: dict[str, object] = {"token": f"t{len(self.requests)}"}
        if self.lifetime is not None:
            answer["expires_in"] = self.lifetime
        return httpx.Response(200, json=answer)


def challenge(host: str = "r.io") -> httpx.Response:
    return httpx.Response(
        401,
        headers={"WWW-Authenticate": 'Bearer realm="https://auth.r.io/token",service="r.io"'},
        request=httpx.Request("GET", f"https://{host}/v2/"),
    )


def run(
    body: Callable[[Authenticator, TokenServer], object],
    server: TokenServer,
    credentials: CredentialStore | None = None,
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            auth = Authenticator(client, credentials or CredentialStore(), RetryPolicy())
            await body(auth, server)  # type: ignore[misc]

    trio.run(main)


def test_no_challenge_means_anonymous() -> None:
    async def body(auth: Authenticator, server: TokenServer) -> None:
        assert await auth.authorization("r.io", [pull_scope("a")]) is None

    run(body, TokenServer())


def test_token_is_fetched_with_scope_and_credentials_then_reused() -> None:
    async def body(auth: Authenticator, server: TokenServer) -> None:
        assert await auth.challenged("r.io", challenge(), [pull_scope("a")], None)
        assert await auth.authorization("r.io", [pull_scope("a")]) == "Bearer t1"
        assert await auth.authorization("r.io", [pull_scope("a")]) == "Bearer t1"
        assert await auth.authorization("r.io", [push_scope("a")]) == "Bearer t2"
        assert await auth.authorization("r.io", [pull_scope("b")]) == "Bearer t3"
        first = server.requests[0]
        assert first.url.params.get_list("scope") == ["repository:a:pull"]
        assert first.url.params["service"] == "r.io"
        assert first.headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
        assert len(server.requests) == 3

    run(body, TokenServer(), CredentialStore({"r.io": Credentials("u", "p")}))


def test_token_renewed_after_expiry_and_after_rejection() -> None:
    async def body(auth: Authenticator, server: TokenServer) -> None:
        await auth.challenged("r.io", challenge(), [pull_scope("a")], None)
        assert await auth.authorization("r.io", [pull_scope("a")]) == "Bearer t1"
        await trio.sleep(1.0)  # lifetime 1 s, renewed at 90 %
        assert await auth.authorization("r.io", [pull_scope("a")]) == "Bearer t2"
        assert await auth.challenged("r.io", challenge(), [pull_scope("a")], "Bearer t2")
        assert await auth.authorization("r.io", [pull_scope("a")]) == "Bearer t3"

    run(body, TokenServer(lifetime=1))


def test_concurrent_readers_share_one_token_fetch() -> None:
    async def body(auth: Authenticator, server: TokenServer) -> None:
        await auth.challenged("r.io", challenge(), [pull_scope("a")], None)
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(auth.authorization, "r.io", [pull_scope("a")])
        assert len(server.requests) == 1

    run(body, TokenServer())


def test_refused_credentials() -> None:
    async def body(auth: Authenticator, server: TokenServer) -> None:
        await auth.challenged("r.io", challenge(), [pull_scope("a")], None)
        with pytest.raises(UnauthorizedError, match="refused"):
            await auth.authorization("r.io", [pull_scope("a")])

    run(body, TokenServer(), CredentialStore({"r.io": Credentials("u", "bad")}))


def test_identity_token_uses_oauth_refresh() -> None:
    async def body(auth: Authenticator, server: TokenServer) -> None:
        await auth.challenged("r.io", challenge(), [pull_scope("a")], None)
        assert await auth.authorization("r.io", [pull_scope("a")]) == "Bearer t1"
        request = server.requests[0]
        assert request.method == "POST"
        form = httpx.QueryParams(request.content.decode())
        assert form["grant_type"] == "refresh_token"
        assert form["refresh_token"] == "idt"
        assert form["scope"] == "repository:a:pull"

    run(body, TokenServer(), CredentialStore({"r.io": Credentials(identity_token="idt")}))


def test_basic_challenge() -> None:
    basic = httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})

    async def body(auth: Authenticator, server: TokenServer) -> None:
        assert await auth.challenged("r.io", basic, [], None)
        assert await auth.authorization("r.io", []) == "Basic " + base64.b64encode(b"u:p").decode()
        assert not await auth.challenged("r.io", basic, [], "Basic xyz")

    run(body, TokenServer(), CredentialStore({"https://r.io/v1/": Credentials("u", "p")}))


def test_basic_challenge_without_credentials() -> None:
    basic = httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})

    async def body(auth: Authenticator, server: TokenServer) -> None:
        await auth.challenged("r.io", basic, [], None)
        with pytest.raises(UnauthorizedError):
            await auth.authorization("r.io", [])

    run(body, TokenServer())
