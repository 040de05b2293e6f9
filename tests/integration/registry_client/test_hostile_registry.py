"""A hostile registry's answers cost the client a refusal, never their size in memory."""

import http.server
from collections.abc import Iterator

import pytest
import trio

from lazy2dfs.registry_client import RegistryClient
from lazy2dfs.registry_client.errors import MalformedManifestError, RegistryProtocolError
from tests.support.registry import http_server

PIECE = b"{" * (1 << 20)


class Endless(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 and a body that never ends (chunked, no length)."""

    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(1024):  # 1 GiB at most: bounded even if the client never stops
                self.wfile.write(b"%x\r\n%s\r\n" % (len(PIECE), PIECE))
                Endless.sent += len(PIECE)
        except OSError:
            return

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def endless() -> Iterator[str]:
    Endless.sent = 0
    with http_server(Endless) as host:
        yield host


def test_an_endless_manifest_is_refused_after_its_limit(endless: str) -> None:
    async def main() -> None:
        async with RegistryClient(plain_http=True) as client:
            with pytest.raises((RegistryProtocolError, MalformedManifestError), match="refused"):
                await client.get_manifest(f"{endless}/hostile/image:v1")

    trio.run(main)
    # The client stopped reading a little past the 4 MiB a manifest may have.
    assert Endless.sent < 64 << 20
