"""Registry client calls from synchronous tests, a small image to push and pull, and an HTTP
server that plays a registry's part."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from devstack.images import BuiltImage, File, Symlink, build_image
from lazy2dfs.registry_client import CredentialStore, RegistryClient, RetryPolicy

T = TypeVar("T")

PAYLOAD = os.urandom(200_000)  # incompressible, so the layer blob is large enough to range over


def sample_image(in_index: bool = True) -> BuiltImage:
    return build_image(
        [
            {"bin/tool": File(b"#!/bin/sh\necho hi\n", 0o755), "bin/sh": Symlink("tool")},
            {"weights/model.bin": PAYLOAD},
        ],
        config={"Cmd": ["/bin/sh"]},
        in_index=in_index,
    )


FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.1, budget=10)


def run(call: Callable[[RegistryClient], Awaitable[T]], retry: RetryPolicy = FAST_RETRY) -> T:
    """``call`` with a client that reads no Docker credentials and retries quickly, so a test
    of faults does not wait out production backoff."""

    async def main() -> T:
        async with RegistryClient(credentials=CredentialStore(), retry=retry) as client:
            return await call(client)

    return trio.run(main)


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on loopback, in threads; yields its ``host:port``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
