"""Running registry client calls from synchronous tests."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from lazy2dfs.registry_client import CredentialStore, RegistryClient

T = TypeVar("T")


def run(call: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with RegistryClient(credentials=CredentialStore()) as client:
            return await call(client)

    return trio.run(main)
