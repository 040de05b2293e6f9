"""Uploading blobs and manifests (distribution spec "push").

A blob the registry already has is skipped (HEAD). One that another repository of the same
registry has is mounted (``POST …/uploads/?mount=<digest>&from=<repo>``), which costs no bytes;
a registry that cannot mount answers 202 and the upload goes on in that session. Bytes in
memory go up in one PUT (monolithic); files, or any data when ``chunk_size`` is given, go in
PATCH chunks so that large model weights never sit in memory. An upload is retried from the
start, in a new session, because upload sessions do not survive every kind of failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final, NoReturn

import httpx
import trio

from lazy2dfs.digest import DigestMismatchError, sha256_digest
from lazy2dfs.registry_client.auth import pull_scope, push_scope
from lazy2dfs.registry_client.errors import (
    RegistryProtocolError,
    UnauthorizedError,
)
from lazy2dfs.registry_client.hosts import Endpoint
from lazy2dfs.registry_client.transport import Transport

DEFAULT_CHUNK_SIZE: Final = 16 * 1024 * 1024
_OCTET_STREAM: Final = {"Content-Type": "application/octet-stream"}


async def push_blob(
    transport: Transport,
    endpoint: Endpoint,
    repository: str,
    digest: str,
    data: bytes | Path,
    *,
    mount_from: str | None = None,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Makes ``digest`` exist in ``repository``; False when it was there already.
    ``progress`` gets the bytes sent so far."""
    scopes = [push_scope(repository)]
    if mount_from is not None:
        scopes.append(pull_scope(mount_from))
    blob_url = endpoint.url(repository, "blobs", digest)

    async def attempt() -> bool:
        async with transport.open("HEAD", blob_url, endpoint=endpoint, scopes=scopes) as head:
            if head.status_code == 200:
                return False
        location = await _start(transport, endpoint, repository, digest, scopes, mount_from)
        if location is None:
            return True
        if isinstance(data, bytes) and chunk_size is None:
            await _put(transport, endpoint, scopes, location, digest, data, "blob upload")
            if progress is not None:
                progress(len(data))
        else:
            await _upload_chunks(
                transport,
                endpoint,
                scopes,
                location,
                digest,
                data,
                chunk_size or DEFAULT_CHUNK_SIZE,
                progress,
            )
        return True

    return await transport.policy.run(f"push {repository}@{digest}", attempt, endpoint.host)


async def _start(
    transport: Transport,
    endpoint: Endpoint,
    repository: str,
    digest: str,
    scopes: list[str],
    mount_from: str | None,
) -> httpx.URL | None:
    """Opens an upload session; None when the blob was mounted and nothing is left to do."""
    url = httpx.URL(endpoint.url(repository, "blobs", "uploads/"))
    if mount_from is not None:
        url = url.copy_merge_params({"mount": digest, "from": mount_from})
    async with transport.open("POST", str(url), endpoint=endpoint, scopes=scopes) as response:
        if response.status_code == 201 and mount_from is not None:
            return None
        return _next_location(response, url, "upload start", expected=202)


async def _upload_chunks(
    transport: Transport,
    endpoint: Endpoint,
    scopes: list[str],
    location: httpx.URL,
    digest: str,
    data: bytes | Path,
    chunk_size: int,
    progress: Callable[[int], None] | None,
) -> None:
    offset = 0
    async for chunk in _chunks(data, chunk_size):
        headers = {**_OCTET_STREAM, "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
        async with transport.open(
            "PATCH", str(location), endpoint=endpoint, scopes=scopes, headers=headers, content=chunk
        ) as response:
            location = _next_location(response, location, "chunk upload", expected=202)
        offset += len(chunk)
        if progress is not None:
            progress(offset)
    await _put(transport, endpoint, scopes, location, digest, b"", "upload commit")


async def _chunks(data: bytes | Path, size: int) -> AsyncIterator[bytes]:
    if isinstance(data, bytes):
        for start in range(0, len(data), size):
            yield data[start : start + size]
        return
    async with await trio.open_file(data, "rb") as stream:
        while chunk := await stream.read(size):
            yield chunk


async def _put(
    transport: Transport,
    endpoint: Endpoint,
    scopes: list[str],
    location: httpx.URL,
    digest: str,
    body: bytes,
    what: str,
) -> None:
    url = location.copy_merge_params({"digest": digest})
    async with transport.open(
        "PUT", str(url), endpoint=endpoint, scopes=scopes, headers=_OCTET_STREAM, content=body
    ) as response:
        if response.status_code != 201:
            await _fail(response, what)


def _next_location(
    response: httpx.Response, base: httpx.URL, what: str, expected: int
) -> httpx.URL:
    location = response.headers.get("location")
    if response.status_code != expected or not location:
        _raise_for(response.status_code, "", what)
    return base.join(location)


async def _fail(response: httpx.Response, what: str) -> None:
    body = (await response.aread()).decode(errors="replace")[:500]
    _raise_for(response.status_code, body, what)


def _raise_for(status: int, body: str, what: str) -> NoReturn:
    if status in (401, 403):
        raise UnauthorizedError(f"{what}: registry refused push (HTTP {status})")
    if status == 400 and "DIGEST_INVALID" in body:
        raise DigestMismatchError(f"{what}: registry says the bytes do not match the digest")
    raise RegistryProtocolError(f"{what}: unexpected HTTP {status} {body}".rstrip())


async def push_manifest(
    transport: Transport,
    endpoint: Endpoint,
    repository: str,
    tag_or_digest: str,
    data: bytes,
    media_type: str,
) -> str:
    """PUTs manifest bytes as given (re-encoding would change the digest); returns the digest."""
    digest = sha256_digest(data)
    url = endpoint.url(repository, "manifests", tag_or_digest)

    async def attempt() -> str:
        async with transport.open(
            "PUT",
            url,
            endpoint=endpoint,
            scopes=[push_scope(repository)],
            headers={"Content-Type": media_type},
            content=data,
        ) as response:
            if response.status_code != 201:
                await _fail(response, f"manifest {repository}:{tag_or_digest}")
            answered = response.headers.get("docker-content-digest")
            if answered and answered != digest:
                raise DigestMismatchError(
                    f"manifest {repository}:{tag_or_digest}: sent {digest}, "
                    f"registry says {answered}"
                )
        return digest

    return await transport.policy.run(
        f"push manifest {repository}:{tag_or_digest}", attempt, endpoint.host
    )
