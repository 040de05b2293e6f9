"""A blocking facade over ``RegistryClient`` for the CLI, scripts and tests.

Each call runs its own ``trio.run`` with a fresh client, so it works from any thread that is
not already inside a trio run. That costs a new connection (and token) per call, which is fine
for what this is for; long-lived code (the daemon) uses ``RegistryClient`` directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from lazy2dfs.registry_client.client import FetchedManifest, RegistryClient, ResolvedImage
from lazy2dfs.registry_client.credentials import CredentialStore
from lazy2dfs.registry_client.hosts import Capability, Endpoint, RegistryHosts
from lazy2dfs.registry_client.manifest import Descriptor
from lazy2dfs.registry_client.platform import Platform
from lazy2dfs.registry_client.ranges import ByteRange
from lazy2dfs.registry_client.reference import Reference
from lazy2dfs.registry_client.retry import RetryPolicy
from lazy2dfs.registry_client.transport import DEFAULT_TIMEOUT

T = TypeVar("T")


class SyncRegistryClient:
    """Same options and methods as ``RegistryClient``, without ``await``."""

    def __init__(
        self,
        *,
        hosts_dir: Path | None = None,
        plain_http: bool | Sequence[str] = False,
        credentials: CredentialStore | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._hosts_dir = hosts_dir
        self._plain_http = plain_http
        self._credentials = credentials
        self._retry = retry
        self._timeout = timeout

    def run(self, call: Callable[[RegistryClient], Awaitable[T]]) -> T:
        """Runs ``call(client)`` in a new trio run, for anything the methods below lack."""

        async def main() -> T:
            async with RegistryClient(
                hosts_dir=self._hosts_dir,
                plain_http=self._plain_http,
                credentials=self._credentials,
                retry=self._retry,
                timeout=self._timeout,
            ) as client:
                return await call(client)

        return trio.run(main)

    def pull_endpoints(self, registry: str) -> list[Endpoint]:
        """Where this client pulls from ``registry``, in the order it tries them."""
        hosts = RegistryHosts(self._hosts_dir, self._plain_http)
        return [e for e in hosts.endpoints(registry) if Capability.PULL in e.capabilities]

    def resolve(self, ref: Reference | str) -> Descriptor:
        return self.run(lambda c: c.resolve(ref))

    def get_manifest(self, ref: Reference | str, digest: str | None = None) -> FetchedManifest:
        return self.run(lambda c: c.get_manifest(ref, digest))

    def get_image(self, ref: Reference | str, platform: Platform | None = None) -> ResolvedImage:
        return self.run(lambda c: c.get_image(ref, platform))

    def stat_blob(self, ref: Reference | str, digest: str) -> int:
        return self.run(lambda c: c.stat_blob(ref, digest))

    def get_blob(self, ref: Reference | str, digest: str) -> bytes:
        return self.run(lambda c: c.get_blob(ref, digest))

    def download_blob(
        self,
        ref: Reference | str,
        digest: str,
        path: Path,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        return self.run(lambda c: c.download_blob(ref, digest, path, progress))

    def read_ranges(
        self, ref: Reference | str, digest: str, ranges: Sequence[ByteRange]
    ) -> list[bytes]:
        return self.run(lambda c: c.blob_reader(ref, digest).read_ranges(ranges))

    def push_blob(
        self,
        ref: Reference | str,
        digest: str,
        data: bytes | Path,
        *,
        mount_from: str | None = None,
        chunk_size: int | None = None,
    ) -> bool:
        return self.run(
            lambda c: c.push_blob(ref, digest, data, mount_from=mount_from, chunk_size=chunk_size)
        )

    def push_manifest(self, ref: Reference | str, data: bytes, media_type: str) -> Descriptor:
        return self.run(lambda c: c.push_manifest(ref, data, media_type))
