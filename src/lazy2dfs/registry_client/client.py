"""The registry client: resolve references, fetch verified manifests and blobs, read ranges, push.

Every request goes to the endpoints ``RegistryHosts`` lists for the reference's registry, in
order, skipping those without the needed capability (tags are resolved only where ``resolve``
is allowed, content by digest is pulled wherever ``pull`` is). Anything fetched by digest is
verified before it is returned; a manifest fetched by tag gets the digest of its bytes.

One client holds one pool of keep-alive connections and one token cache; use it as an async
context manager inside a trio run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

import httpx
import trio

from lazy2dfs.digest import (
    DigestMismatchError,
    Verifier,
    sha256_digest,
    validate_digest,
    verify_bytes,
)
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client import push as _push
from lazy2dfs.registry_client.auth import pull_scope
from lazy2dfs.registry_client.blobs import WARM_SECONDS, BlobReader, BlobRoutes
from lazy2dfs.registry_client.credentials import CredentialStore, default_docker_config
from lazy2dfs.registry_client.errors import (
    BlobNotFoundError,
    MalformedManifestError,
    ManifestNotFoundError,
    RegistryProtocolError,
    RegistryUnavailableError,
)
from lazy2dfs.registry_client.hosts import Capability, Endpoint, RegistryHosts
from lazy2dfs.registry_client.manifest import (
    ACCEPT,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageIndex,
    ImageManifest,
    parse_manifest,
    select_platform,
)
from lazy2dfs.registry_client.platform import Platform, host_platform
from lazy2dfs.registry_client.reference import DOCKER_HUB, Reference, parse_reference
from lazy2dfs.registry_client.retry import RetryPolicy
from lazy2dfs.registry_client.spill import SpillArea
from lazy2dfs.registry_client.transport import DEFAULT_TIMEOUT, Transport

log = get_logger(__name__)

T = TypeVar("T")

# Small blobs (configs, 2DFS fields, TOCs) are returned in memory; larger ones go to files.
MAX_IN_MEMORY_BLOB: Final = 64 * 1024 * 1024
_NOT_FOUND: Final = (ManifestNotFoundError, BlobNotFoundError, RegistryUnavailableError)


@dataclass(frozen=True)
class FetchedManifest:
    """Verified manifest bytes, what they describe, and the parsed document."""

    descriptor: Descriptor
    data: bytes
    manifest: ImageManifest | ImageIndex


@dataclass(frozen=True)
class ResolvedImage:
    """An image reference resolved down to the image manifest for one platform."""

    reference: Reference  # pinned to ``root.digest``
    root: Descriptor  # what the tag names: an index or the manifest itself
    descriptor: Descriptor  # the platform's image manifest
    manifest: ImageManifest
    index: ImageIndex | None


def _as_reference(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


class RegistryClient:
    """Async OCI distribution client; one per process (or per trio run) is enough."""

    def __init__(
        self,
        *,
        hosts_dir: Path | None = None,
        plain_http: bool | Sequence[str] = False,
        credentials: CredentialStore | None = None,
        retry: RetryPolicy | None = None,
        range_retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        spill: SpillArea | None = None,
        skip_hosts: Collection[str] = (),
        mirror_warm_seconds: float = WARM_SECONDS,
    ) -> None:
        """``spill``: where whole blobs a registry sends for range requests are kept to serve
        later ranges (``registry_client.spill``); without it only the ranges asked are kept.
        ``range_retry``: how range reads are retried (default: as every request, ``retry``);
        the daemon gives them its read deadline as their budget. ``skip_hosts``: ``host:port``
        listeners of this process that hosts.toml may name as mirrors (the daemon's partition
        mirror); requests never go to them. ``mirror_warm_seconds``: how long reads of a blob
        wait for a mirror to fetch it and serve ranges (``registry_client.blobs``)."""
        self.hosts = RegistryHosts(hosts_dir, plain_http, skip_hosts)
        self._range_retry = range_retry
        self.credentials = credentials or CredentialStore(docker_config=default_docker_config())
        self._transport = Transport(self.credentials, retry or RetryPolicy(), timeout)
        self._routes = BlobRoutes(spill, mirror_warm_seconds)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._routes.spill is not None:
            self._routes.spill.close()
        await self._transport.aclose()

    # -- endpoints ---------------------------------------------------------------------------

    def _endpoints(self, ref: Reference, capability: Capability) -> list[Endpoint]:
        endpoints = [e for e in self.hosts.endpoints(ref.registry) if capability in e.capabilities]
        if not endpoints:
            raise RegistryUnavailableError(f"{ref.registry}: no endpoint may {capability.name}")
        return endpoints

    @staticmethod
    def _url(endpoint: Endpoint, ref: Reference, kind: str, name: str) -> str:
        """The URL on ``endpoint``; a mirror learns the upstream registry from ``ns=``."""
        url = endpoint.url(ref.repository, kind, name)
        docker_hub = ref.registry == DOCKER_HUB and endpoint.host == "registry-1.docker.io"
        if endpoint.host != ref.registry and not docker_hub:
            url += "?" + str(httpx.QueryParams({"ns": ref.registry}))
        return url

    async def _first(
        self, endpoints: Sequence[Endpoint], what: str, call: Callable[[Endpoint], Awaitable[T]]
    ) -> T:
        """``call`` on each endpoint until one succeeds; not-found and outages move on."""
        failures: list[Exception] = []
        for endpoint in endpoints:
            try:
                return await call(endpoint)
            except _NOT_FOUND as err:
                log.debug("endpoint failed", what=what, host=endpoint.host, error=str(err))
                failures.append(err)
        unavailable = [f for f in failures if isinstance(f, RegistryUnavailableError)]
        raise (unavailable or failures)[0]

    # -- manifests ---------------------------------------------------------------------------

    async def resolve(self, ref: Reference | str) -> Descriptor:
        """The descriptor (media type, digest, size) of what the reference names."""
        return (await self.get_manifest(ref)).descriptor

    async def get_manifest(
        self, ref: Reference | str, digest: str | None = None
    ) -> FetchedManifest:
        """The manifest or index named by ``ref`` (or by ``digest`` in its repository)."""
        reference = _as_reference(ref)
        wanted = validate_digest(digest) if digest else reference.digest
        capability = Capability.PULL if wanted else Capability.RESOLVE
        name = wanted or reference.object
        return await self._first(
            self._endpoints(reference, capability),
            f"manifest {reference}",
            lambda endpoint: self._fetch_manifest(endpoint, reference, name, wanted),
        )

    async def _fetch_manifest(
        self, endpoint: Endpoint, ref: Reference, name: str, wanted: str | None
    ) -> FetchedManifest:
        response = await self._transport.request(
            "GET",
            self._url(endpoint, ref, "manifests", name),
            endpoint=endpoint,
            what=f"manifest {ref.repository}:{name} from {endpoint.host}",
            scopes=[pull_scope(ref.repository)],
            headers={"Accept": ACCEPT},
            max_body=MAX_MANIFEST_SIZE,
        )
        if response.status_code == 404:
            raise ManifestNotFoundError(f"manifest {ref.name}:{name} not found on {endpoint.host}")
        if response.status_code != 200:
            raise RegistryProtocolError(
                f"manifest {ref.name}:{name}: unexpected HTTP {response.status_code}"
            )
        data = response.content
        if len(data) > MAX_MANIFEST_SIZE:
            raise MalformedManifestError(f"manifest {ref.name}:{name} is over 4 MiB")
        digest = self._manifest_digest(data, wanted, response.headers.get("docker-content-digest"))
        manifest = parse_manifest(data, response.headers.get("content-type", ""))
        media_type = manifest.media_type or response.headers.get("content-type", "").split(";")[0]
        descriptor = Descriptor(mediaType=media_type, digest=digest, size=len(data))
        return FetchedManifest(descriptor, data, manifest)

    @staticmethod
    def _manifest_digest(data: bytes, wanted: str | None, announced: str | None) -> str:
        if wanted is not None:
            verify_bytes(data, wanted, "manifest")
            return wanted
        digest = sha256_digest(data)
        if announced and announced.startswith("sha256:") and announced != digest:
            raise DigestMismatchError(f"manifest: registry says {announced}, bytes are {digest}")
        return digest

    async def get_image(
        self, ref: Reference | str, platform: Platform | None = None
    ) -> ResolvedImage:
        """The image manifest for ``platform`` (default: this host), via the index if any."""
        reference = _as_reference(ref)
        root = await self.get_manifest(reference)
        pinned = reference.with_digest(root.descriptor.digest)
        if isinstance(root.manifest, ImageManifest):
            return ResolvedImage(pinned, root.descriptor, root.descriptor, root.manifest, None)
        entry = select_platform(root.manifest, platform or host_platform())
        fetched = await self.get_manifest(pinned, entry.digest)
        if not isinstance(fetched.manifest, ImageManifest):
            raise MalformedManifestError(
                f"{reference}: index entry {entry.digest} is not a manifest"
            )
        if fetched.descriptor.size != entry.size:
            raise DigestMismatchError(f"{reference}: manifest {entry.digest} size differs")
        return ResolvedImage(pinned, root.descriptor, entry, fetched.manifest, root.manifest)

    # -- blobs -------------------------------------------------------------------------------

    def _blob_targets(self, ref: Reference, digest: str) -> list[tuple[Endpoint, str]]:
        return [
            (endpoint, self._url(endpoint, ref, "blobs", digest))
            for endpoint in self._endpoints(ref, Capability.PULL)
        ]

    def blob_reader(self, ref: Reference | str, digest: str, size: int | None = None) -> BlobReader:
        """Range reads of a blob; no request is made until the first read."""
        reference = _as_reference(ref)
        validate_digest(digest)
        return BlobReader(
            self._transport,
            self._blob_targets(reference, digest),
            reference.repository,
            digest,
            size,
            self._routes,
            self._range_retry,
        )

    async def stat_blob(self, ref: Reference | str, digest: str) -> int:
        """The blob's size, from a HEAD request."""
        reference = _as_reference(ref)
        validate_digest(digest)

        async def head(endpoint: Endpoint) -> int:
            response = await self._transport.request(
                "HEAD",
                self._url(endpoint, reference, "blobs", digest),
                endpoint=endpoint,
                what=f"HEAD blob {digest}",
                scopes=[pull_scope(reference.repository)],
            )
            if response.status_code == 404:
                raise BlobNotFoundError(f"blob {digest} not in {reference.name}")
            length = response.headers.get("content-length", "")
            if response.status_code != 200 or not length.isdigit():
                raise RegistryProtocolError(f"HEAD blob {digest}: HTTP {response.status_code}")
            return int(length)

        return await self._first(
            self._endpoints(reference, Capability.PULL), f"blob {digest}", head
        )

    @asynccontextmanager
    async def open_blob(
        self, ref: Reference | str, digest: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A blob's response with its body unread, for relaying it (``headers``: e.g. a
        ``Range``); its status is 200, 206 or 416. Nothing here verifies the bytes: the
        reader must (a range cannot be checked against the blob's digest)."""
        reference = _as_reference(ref)
        validate_digest(digest)
        failures: list[Exception] = []
        for endpoint, url in self._blob_targets(reference, digest):
            stack = AsyncExitStack()
            try:
                response = await self._transport.policy.run(
                    f"blob {digest} from {endpoint.host}",
                    functools.partial(
                        self._open_blob, stack, endpoint, url, reference, digest, headers
                    ),
                )
            except _NOT_FOUND as err:
                await stack.aclose()
                log.debug("endpoint failed", what=digest, host=endpoint.host, error=str(err))
                failures.append(err)
                continue
            except BaseException:
                await stack.aclose()
                raise
            async with stack:
                yield response
            return
        unavailable = [f for f in failures if isinstance(f, RegistryUnavailableError)]
        raise (unavailable or failures)[0]

    async def _open_blob(
        self,
        stack: AsyncExitStack,
        endpoint: Endpoint,
        url: str,
        ref: Reference,
        digest: str,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        response = await stack.enter_async_context(
            self._transport.open(
                "GET", url, endpoint=endpoint, scopes=[pull_scope(ref.repository)], headers=headers
            )
        )
        if response.status_code == 404:
            raise BlobNotFoundError(f"blob {digest} not in {ref.name}")
        if response.status_code not in (200, 206, 416):
            raise RegistryProtocolError(f"GET blob {digest}: HTTP {response.status_code}")
        return response

    async def get_blob(
        self, ref: Reference | str, digest: str, max_size: int = MAX_IN_MEMORY_BLOB
    ) -> bytes:
        """A whole blob in memory, verified; refuses blobs above ``max_size``."""
        reference = _as_reference(ref)
        validate_digest(digest)

        async def fetch(endpoint: Endpoint) -> bytes:
            url = self._url(endpoint, reference, "blobs", digest)

            async def attempt() -> bytes:
                async with self._transport.open(
                    "GET", url, endpoint=endpoint, scopes=[pull_scope(reference.repository)]
                ) as response:
                    self._check_blob_status(response, digest, reference)
                    verifier = Verifier(digest)
                    chunks = []
                    async for chunk in response.aiter_bytes():
                        verifier.update(chunk)
                        if verifier.size > max_size:
                            raise RegistryProtocolError(f"blob {digest} exceeds {max_size} bytes")
                        chunks.append(chunk)
                    verifier.verify(f"blob {digest}")
                    return b"".join(chunks)

            return await self._transport.policy.run(f"blob {digest}", attempt, endpoint.host)

        return await self._first(
            self._endpoints(reference, Capability.PULL), f"blob {digest}", fetch
        )

    async def download_blob(
        self,
        ref: Reference | str,
        digest: str,
        path: Path,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Streams a blob to ``path`` and returns its size; ``progress`` gets the bytes
        received so far.

        The bytes go to ``<path>.partial`` first and are renamed only once verified, so
        ``path`` never holds unverified content.
        """
        reference = _as_reference(ref)
        validate_digest(digest)
        partial = path.with_name(path.name + ".partial")

        async def fetch(endpoint: Endpoint) -> int:
            url = self._url(endpoint, reference, "blobs", digest)

            async def attempt() -> int:
                async with self._transport.open(
                    "GET", url, endpoint=endpoint, scopes=[pull_scope(reference.repository)]
                ) as response:
                    self._check_blob_status(response, digest, reference)
                    verifier = Verifier(digest)
                    async with await trio.open_file(partial, "wb") as out:
                        async for chunk in response.aiter_bytes():
                            verifier.update(chunk)
                            await out.write(chunk)
                            if progress is not None:
                                progress(verifier.size)
                verifier.verify(f"blob {digest}")
                os.replace(partial, path)
                return verifier.size

            return await self._transport.policy.run(f"download {digest}", attempt, endpoint.host)

        try:
            return await self._first(
                self._endpoints(reference, Capability.PULL), f"blob {digest}", fetch
            )
        finally:
            partial.unlink(missing_ok=True)

    @staticmethod
    def _check_blob_status(response: httpx.Response, digest: str, ref: Reference) -> None:
        if response.status_code == 404:
            raise BlobNotFoundError(f"blob {digest} not in {ref.name}")
        if response.status_code != 200:
            raise RegistryProtocolError(f"GET blob {digest}: HTTP {response.status_code}")

    # -- push --------------------------------------------------------------------------------

    def _push_endpoint(self, ref: Reference) -> Endpoint:
        return self._endpoints(ref, Capability.PUSH)[0]

    async def push_blob(
        self,
        ref: Reference | str,
        digest: str,
        data: bytes | Path,
        *,
        mount_from: str | None = None,
        chunk_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> bool:
        """Uploads a blob unless present; True when bytes were sent or mounted. ``progress``
        gets the bytes sent so far."""
        reference = _as_reference(ref)
        return await _push.push_blob(
            self._transport,
            self._push_endpoint(reference),
            reference.repository,
            validate_digest(digest),
            data,
            mount_from=mount_from,
            chunk_size=chunk_size,
            progress=progress,
        )

    async def push_manifest(self, ref: Reference | str, data: bytes, media_type: str) -> Descriptor:
        """PUTs a manifest or index under the reference's tag (or its digest if untagged)."""
        reference = _as_reference(ref)
        target = reference.tag or reference.digest
        assert target is not None
        digest = await _push.push_manifest(
            self._transport,
            self._push_endpoint(reference),
            reference.repository,
            target,
            data,
            media_type,
        )
        return Descriptor(mediaType=media_type, digest=digest, size=len(data))
