"""Range reads of one blob, with the fallbacks real registries and blob stores need.

Registries commonly redirect blob GETs to storage (S3, GCS, a CDN) with a pre-signed URL. The
first read resolves the redirect and later reads go straight to storage; when the URL expires
(401/403 from storage) the registry is asked again, once per read. Several ranges go in one
``multipart/byteranges`` request; a registry that refuses that (400/416) is remembered and
asked one range at a time. A registry that ignores ``Range`` and sends the whole blob (200) is
still served: the blob is streamed, checked against its digest, and the wanted bytes cut out.

Bytes of a partial read cannot be checked against the blob digest; the reader checks them
against the chunk digests of the eStargz TOC before they are used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import httpx
import trio

from lazy2dfs.digest import Verifier
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.auth import pull_scope
from lazy2dfs.registry_client.errors import (
    BlobNotFoundError,
    RangeError,
    RegistryProtocolError,
    RegistryUnavailableError,
    UnauthorizedError,
)
from lazy2dfs.registry_client.hosts import Endpoint
from lazy2dfs.registry_client.ranges import (
    ByteRange,
    Part,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    slice_parts,
)
from lazy2dfs.registry_client.transport import Transport

log = get_logger(__name__)

# Single-range requests in flight at once when a registry refuses multi-range requests.
SINGLE_RANGE_CONCURRENCY: Final = 4
# Multi-range refusals: some registries say 400, others 416 for the whole set.
_MULTI_RANGE_REFUSED: Final = frozenset({400, 416})
_EXPIRED: Final = frozenset({401, 403})


class _MultiRangeRefused(Exception):
    pass


class BlobReader:
    """Reads byte ranges of one blob; satisfies ``lazy2dfs.remote.reader.BlobSource``.

    ``targets`` are the (endpoint, blob URL) pairs able to serve the blob, in order; the first
    that answers is kept for later reads.
    """

    def __init__(
        self,
        transport: Transport,
        targets: Sequence[tuple[Endpoint, str]],
        repository: str,
        digest: str,
        size: int | None = None,
    ) -> None:
        if not targets:
            raise BlobNotFoundError(f"{repository}@{digest}: no endpoint can pull")
        self._transport = transport
        self._targets = list(targets)
        self._scopes = (pull_scope(repository),)
        self.digest = digest
        self.size = size
        self._location: str | None = None  # pre-signed storage URL from the last redirect
        self._single_range = False
        self._whole_blob_warned = False

    async def read_range(self, offset: int, length: int) -> bytes:
        return (await self.read_ranges([(offset, length)]))[0]

    async def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each ``(offset, length)``, in the order asked."""
        wanted = list(ranges)
        for offset, length in wanted:
            if offset < 0 or length <= 0:
                raise RangeError(f"{self.digest}: invalid range {offset}+{length}")
            if self.size is not None and offset + length > self.size:
                raise RangeError(f"{self.digest}: range {offset}+{length} beyond {self.size}")
        if len(wanted) == 1:
            return await self._fetch(wanted)
        if not self._single_range:
            try:
                return await self._fetch(wanted)
            except _MultiRangeRefused:
                self._single_range = True
                log.info("registry refuses multi-range requests", blob=self.digest)
        return await self._one_by_one(wanted)

    async def _one_by_one(self, wanted: list[ByteRange]) -> list[bytes]:
        """Single-range requests, a few at a time; the first failure is raised as itself."""
        results: list[bytes] = [b""] * len(wanted)
        failures: list[Exception] = []
        limiter = trio.CapacityLimiter(SINGLE_RANGE_CONCURRENCY)

        async def one(index: int, byte_range: ByteRange) -> None:
            async with limiter:
                if failures:
                    return
                try:
                    results[index] = (await self._fetch([byte_range]))[0]
                except Exception as err:  # re-raised below, outside the nursery
                    failures.append(err)

        async with trio.open_nursery() as nursery:
            for index, byte_range in enumerate(wanted):
                nursery.start_soon(one, index, byte_range)
        if failures:
            raise failures[0]
        return results

    async def _fetch(self, ranges: list[ByteRange]) -> list[bytes]:
        failure: Exception | None = None
        for endpoint, url in list(self._targets):
            try:
                result = await self._transport.policy.run(
                    f"blob {self.digest} from {endpoint.host}",
                    functools.partial(self._attempt, endpoint, url, ranges),
                )
            except (BlobNotFoundError, RegistryUnavailableError) as err:
                failure = err
                continue
            self._targets.remove((endpoint, url))
            self._targets.insert(0, (endpoint, url))
            return result
        assert failure is not None
        raise failure

    async def _attempt(self, endpoint: Endpoint, url: str, ranges: list[ByteRange]) -> list[bytes]:
        headers = {"Range": range_header(ranges)}
        if self._location is not None:
            async with self._transport.open(
                "GET", self._location, endpoint=None, headers=headers
            ) as response:
                if response.status_code not in _EXPIRED:
                    return await self._answer(response, ranges)
            log.info("blob URL expired, asking the registry again", blob=self.digest)
            self._location = None
        async with self._transport.open(
            "GET", url, endpoint=endpoint, scopes=self._scopes, headers=headers
        ) as response:
            if str(response.url) != url:
                self._location = str(response.url)
            return await self._answer(response, ranges)

    async def _answer(self, response: httpx.Response, ranges: list[ByteRange]) -> list[bytes]:
        status = response.status_code
        if status == 206:
            return slice_parts(await self._parts(response), ranges)
        if status == 200:
            return await self._from_whole_blob(response, ranges)
        if status == 404:
            raise BlobNotFoundError(f"blob {self.digest} not found")
        if status in _MULTI_RANGE_REFUSED and len(ranges) > 1:
            raise _MultiRangeRefused
        if status == 416:
            raise RangeError(f"{self.digest}: registry says {range_header(ranges)} unsatisfiable")
        if status in _EXPIRED:
            raise UnauthorizedError(f"blob {self.digest}: HTTP {status}")
        raise RegistryProtocolError(f"blob {self.digest}: unexpected HTTP {status}")

    async def _parts(self, response: httpx.Response) -> list[Part]:
        body = await response.aread()
        content_type = response.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/byteranges"):
            return parse_multipart_byteranges(body, content_type)
        first, last, total = parse_content_range(response.headers.get("content-range", ""))
        if len(body) != last - first + 1:
            raise RegistryProtocolError(
                f"blob {self.digest}: {len(body)} bytes for Content-Range {first}-{last}"
            )
        if self.size is None and total is not None:
            self.size = total
        return [Part(first, body)]

    async def _from_whole_blob(
        self, response: httpx.Response, ranges: list[ByteRange]
    ) -> list[bytes]:
        """Streams the whole blob, verifying it, and keeps only the span the ranges need."""
        if not self._whole_blob_warned:
            self._whole_blob_warned = True
            log.warning("registry ignores Range, reading whole blob", blob=self.digest)
        low = min(offset for offset, _ in ranges)
        high = max(offset + length for offset, length in ranges)
        kept = bytearray()
        verifier = Verifier(self.digest)
        async for chunk in response.aiter_bytes():
            position = verifier.size
            verifier.update(chunk)
            start, stop = max(low, position), min(high, position + len(chunk))
            if start < stop:
                kept += chunk[start - position : stop - position]
        verifier.verify(f"blob {self.digest}")
        self.size = verifier.size
        return slice_parts([Part(low, bytes(kept))], ranges)
