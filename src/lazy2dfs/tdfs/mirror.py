"""The partition mirror: a read-only OCI distribution endpoint that serves 2DFS partition tags.

Only ``lazy2dfs pull`` can compute a partition on the client; CRI (kubelet), ``ctr``, the
transfer service and image volumes ask the registry for ``model:v1--1.0.2.0`` and get 404 from
any registry but the 2DFS fork. containerd sends them here instead when the registry's
``hosts.toml`` names the mirror first::

    server = "https://registry.example.com"
    [host."http://127.0.0.1:5050"]
      capabilities = ["pull", "resolve"]

containerd then adds ``?ns=<registry>`` to every request, which says where the image lives.

- ``GET|HEAD /v2/<name>/manifests/<tag>--x1.y1.x2.y2[--…]``: the partitioned manifest computed
  from the image's field (``fetch_partitioned_image``), with the TOC annotations that let a
  lazy snapshotter mount zstd:chunked and eStargz allotments; kept in ``ComputedImages``,
  because containerd fetches it again by digest, and so does the snapshotter (CRI's labels
  name it by digest).
- ``…/manifests/<digest>`` and ``…/blobs/<digest>``: the computed manifest or config when it is
  one, else relayed from the registry: manifests verified and whole, blobs streamed as they
  arrive (``Range`` passed on), for containerd to verify.
- Anything else is refused; writes with 405. A client that cannot use an answer tries the next
  host of hosts.toml, the registry itself.
- Only registries whose hosts.toml (in the daemon's ``registry.hosts_dir``) names the mirror
  are served; others get 403, so the operator's hosts.toml files are the list of registries
  the daemon's credentials are used for on the mirror's clients' behalf.

Credentials are the daemon's (Docker's config and credential helpers, through
``RegistryClient``): whoever reaches the mirror pulls what they allow, which is why it listens
on loopback unless the configuration says otherwise. Requests to the registry skip the mirror
itself, whatever hosts.toml says.

Bounds (``MirrorLimits``): so many clients at once (others wait in the listen queue); a
request head of so many bytes, received within seconds; idle keep-alive connections closed;
every answer but a blob body within a deadline, whatever the registry does; a blob body moving
at least every 30 s from the registry (httpx's read timeout) and to the client, and ending
within a time that grows with its size, so that a registry dripping bytes ends too. Memory per
request: the head, one manifest (4 MiB at most), a field and config (16 MiB each at most), one
body chunk at a time.

It runs its own trio loop in its own thread, with its own registry client: the FUSE loop never
waits behind it. It sits in ``tdfs`` (below ``layers`` and ``snapshotter``, above
``registry_client``) because it needs only the field, partitions and the registry client; the
daemon starts it, and the snapshotter's locator reads ``ComputedImages``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

import h11
import trio

from lazy2dfs import metrics
from lazy2dfs.config import Config
from lazy2dfs.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    Lazy2dfsError,
    NotFoundError,
    UnavailableError,
)
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client import (
    OCI_MANIFEST,
    Reference,
    RegistryClient,
    RegistryHosts,
    parse_reference,
)
from lazy2dfs.registry_client.hosts import reaches
from lazy2dfs.tdfs.computed import ComputedImages
from lazy2dfs.tdfs.resolve import fetch_partitioned_image

log = get_logger(__name__)

START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 10.0
_RECEIVE: Final = 64 * 1024

_PATH: Final = re.compile(
    r"^/v2/(?P<name>[a-z0-9]+(?:[._/-]+[a-z0-9]+)*)/(?P<kind>manifests|blobs)/(?P<object>[\w.:+-]+)$"
)
_RANGE: Final = re.compile(r"^bytes=[0-9]*-[0-9]*(?:,\s*[0-9]*-[0-9]*)*$")
_API_VERSION: Final = ("Docker-Distribution-API-Version", "registry/2.0")
_BLOB_TYPE: Final = "application/octet-stream"
_JSON: Final = "application/json"


@dataclass(frozen=True)
class MirrorLimits:
    """What one client or one registry may take of the mirror."""

    connections: int = 128
    head_bytes: int = 16 * 1024
    head_seconds: float = 10.0  # to send a request head, from connecting
    idle_seconds: float = 30.0  # between requests on a kept-alive connection
    answer_seconds: float = 90.0  # for every answer but a blob body, registry included
    stall_seconds: float = 30.0  # for the client to take the next piece of an answer
    # A blob body may take a minute plus a second per MiB (1 MiB/s, the slowest link served).
    body_floor_seconds: float = 60.0
    body_slowest_rate: int = 1 << 20

    def body_seconds(self, size: int | None) -> float:
        """Seconds a blob body of ``size`` bytes (None: unknown, an hour) may take in all."""
        if size is None:
            return self.body_floor_seconds * 60
        return self.body_floor_seconds + size / self.body_slowest_rate


class _Refused(Exception):
    """An answer other than 200, decided before anything was sent."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _refusal(err: Exception, kind: str) -> _Refused:
    """The one mapping of domain errors to HTTP answers a registry client understands."""
    message = str(err)
    if isinstance(err, _Refused):
        return err
    if isinstance(err, trio.TooSlowError):
        return _Refused(504, "UNAVAILABLE", "the registry did not answer in time")
    if isinstance(err, NotFoundError):
        return _Refused(404, "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN", message)
    if isinstance(err, InvalidArgumentError):
        return _Refused(400, "MANIFEST_INVALID" if kind == "manifests" else "UNSUPPORTED", message)
    if isinstance(err, FailedPreconditionError):
        return _Refused(403, "DENIED", message)
    if isinstance(err, Lazy2dfsError):  # unavailable, integrity: nothing to serve from here
        return _Refused(502, "UNAVAILABLE", message)
    return _Refused(500, "UNKNOWN", f"{type(err).__name__}: {message}")


@dataclass(frozen=True)
class _Request:
    kind: str  # "manifests" or "blobs"
    ref: Reference  # upstream, with the tag (and partitions) or the digest asked for
    range: str | None


class _Exchange:
    """One request's answer on a connection: the response head, then body chunks."""

    def __init__(
        self, conn: h11.Connection, stream: trio.SocketStream, method: str, stall: float
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._stall = stall
        self.head_only = method == "HEAD"
        self.started = False
        self.status = 0

    async def _send(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            with trio.fail_after(self._stall):
                await self._stream.send_all(data)

    async def head(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.started, self.status = True, status
        await self._send(h11.Response(status_code=status, headers=[_API_VERSION, *headers]))

    async def data(self, chunk: bytes) -> None:
        if chunk and not self.head_only:
            await self._send(h11.Data(data=chunk))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def whole(self, status: int, content_type: str, body: bytes, digest: str = "") -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if digest:
            headers.append(("Docker-Content-Digest", digest))
        await self.head(status, headers)
        await self.data(body)
        await self.end()

    async def refuse(self, refused: _Refused) -> None:
        """The distribution spec's error body: ``{"errors":[{"code","message"}]}``."""
        error = {"code": refused.code, "message": str(refused)}
        await self.whole(refused.status, _JSON, json.dumps({"errors": [error]}).encode())


class PartitionMirror:
    """Serves the mirror on ``config.mirror_address`` from ``start`` to ``stop``."""

    def __init__(
        self, config: Config, images: ComputedImages, limits: MirrorLimits | None = None
    ) -> None:
        address = config.mirror_host_port
        assert address is not None and config.mirror_address is not None
        self.config = config
        self.images = images
        self.limits = limits or MirrorLimits()
        self._address = address
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._client: RegistryClient | None = None

    @property
    def port(self) -> int:
        return self._address[1]

    def start(self) -> PartitionMirror:
        host, port = self._address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(self.limits.connections)
        except OSError as exc:
            sock.close()
            raise UnavailableError(
                f"cannot serve the partition mirror on {self.config.mirror_address}:"
                f" {exc.strerror} (change mirror_address or --mirror-address)"
            ) from exc
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, sock), name="partition-mirror", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise UnavailableError("the partition mirror did not start")
        log.info("partition mirror serving", address=self.config.mirror_address)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._token is not None and self._scope is not None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(STOP_TIMEOUT)
        self._thread = None

    async def _main(self, sock: socket.socket) -> None:
        config = self.config
        assert config.mirror_address is not None
        async with RegistryClient(
            hosts_dir=config.registry.hosts_dir,
            plain_http=config.registry.plain_http,
            skip_hosts=[config.mirror_address],
        ) as client:
            self._client = client
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            slots = trio.Semaphore(self.limits.connections)
            with trio.CancelScope() as scope:
                self._scope, self._token = scope, trio.lowlevel.current_trio_token()
                self._ready.set()
                async with trio.open_nursery() as nursery:
                    while True:
                        await slots.acquire()
                        stream = await listener.accept()
                        nursery.start_soon(self._connection, stream, slots)
            await listener.aclose()

    async def _connection(self, stream: trio.SocketStream, slots: trio.Semaphore) -> None:
        limits = self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.head_bytes)
        try:
            first = True
            while True:
                with trio.move_on_after(limits.head_seconds if first else limits.idle_seconds):
                    request = await self._next_request(conn, stream)
                if request is None:
                    return
                first = False
                await self._exchange(conn, stream, request)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.TooSlowError) as err:
            log.debug("mirror connection ended", error=repr(err))
        except Exception as err:  # one client's failure must not end the server
            log.warning("mirror connection failed", error=repr(err))
        finally:
            slots.release()
            await stream.aclose()

    async def _next_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> h11.Request | None:
        """The next request with its (empty) body read; None when the client closed."""
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECEIVE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                raise h11.RemoteProtocolError("a request body here is refused", 413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:  # ConnectionClosed, or PAUSED after a close
                return None

    async def _exchange(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> None:
        method = request.method.decode("ascii", "replace")
        exchange = _Exchange(conn, stream, method, self.limits.stall_seconds)
        what = "other"
        try:
            parsed = self._parse(method, request)
            if parsed is None:
                await exchange.whole(200, _JSON, b"{}")  # the API version check, GET /v2/
                return
            what = self._what(parsed)
            await self._answer(exchange, parsed)
        except Exception as err:
            refused = _refusal(err, "manifests" if b"/manifests/" in request.target else "blobs")
            if exchange.started:
                raise  # the client sees a cut body, which it cannot take for the blob
            if refused.status >= 500 or what == "partition":
                log.warning(
                    "mirror refused",
                    target=request.target.decode("ascii", "replace").split("?")[0],
                    status=refused.status,
                    reason=str(refused),
                    action="see the reason; containerd tries the next host of hosts.toml",
                )
            await exchange.refuse(refused)
        finally:
            metrics.MIRROR_REQUESTS.labels(what, str(exchange.status or 0)).inc()

    def _parse(self, method: str, request: h11.Request) -> _Request | None:
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            raise _Refused(405, "UNSUPPORTED", f"{method}: the partition mirror is read-only")
        if path in ("/v2", "/v2/"):
            return None
        match = _PATH.match(path)
        if match is None:
            raise _Refused(404, "UNSUPPORTED", f"{path}: the mirror serves manifests and blobs")
        upstream = parse_qs(query).get("ns", [""])[0]
        if not upstream:
            raise _Refused(
                400,
                "NAME_UNKNOWN",
                "no ?ns=<registry> in the request: reach the mirror through hosts.toml,"
                " which makes containerd name the registry",
            )
        if not self._routed_here(upstream):
            raise _Refused(
                403,
                "DENIED",
                f"{upstream}: its hosts.toml in {self.config.registry.hosts_dir} does not name"
                f" this mirror ({self.config.mirror_address}); the mirror serves only"
                " registries routed through it",
            )
        name, kind, obj = match.group("name", "kind", "object")
        if kind == "blobs" and ":" not in obj:
            raise _Refused(400, "DIGEST_INVALID", f"{obj}: blobs are asked for by digest")
        separator = "@" if ":" in obj else ":"
        ref = parse_reference(f"{upstream}/{name}{separator}{obj}")
        wanted = dict(request.headers).get(b"range", b"").decode("ascii", "replace") or None
        if wanted is not None and not _RANGE.match(wanted):
            wanted = None  # not a byte range: answered whole, as HTTP allows
        return _Request(kind, ref, wanted)

    def _routed_here(self, registry: str) -> bool:
        """Whether ``registry``'s hosts.toml names this mirror: the operator's list of the
        registries the daemon's credentials may be used for on behalf of the mirror's clients.
        Read at each request, as containerd reads it at each pull."""
        hosts = RegistryHosts(self.config.registry.hosts_dir, self.config.registry.plain_http)
        own = self.config.mirror_address
        assert own is not None
        return any(reaches(endpoint.host, own) for endpoint in hosts.endpoints(registry))

    def _what(self, request: _Request) -> str:
        """What ``request`` asks for, as the metric and the log name it."""
        digest = request.ref.digest
        if request.kind == "manifests":
            if digest is not None and self.images.image(digest) is not None:
                return "computed"
            return "partition" if request.ref.partitions else "manifest"
        return "computed" if digest and self.images.config(digest) is not None else "blob"

    async def _answer(self, exchange: _Exchange, request: _Request) -> None:
        client = self._client
        assert client is not None
        ref = request.ref
        if request.kind == "manifests":
            if ref.digest is not None and (image := self.images.image(ref.digest)):
                await exchange.whole(200, OCI_MANIFEST, image.manifest, ref.digest)
                return
            if ref.partitions:
                with trio.fail_after(self.limits.answer_seconds):
                    image = await fetch_partitioned_image(client, ref)
                self.images.add(image)
                log.info(
                    "partition served",
                    image=str(ref),
                    manifest=image.manifest_digest,
                    config=image.config_digest,
                )
                await exchange.whole(200, OCI_MANIFEST, image.manifest, image.manifest_digest)
                return
            with trio.fail_after(self.limits.answer_seconds):
                fetched = await client.get_manifest(ref)
            media_type, digest = fetched.descriptor.media_type, fetched.descriptor.digest
            await exchange.whole(200, media_type, fetched.data, digest)
            return
        assert ref.digest is not None
        if (config := self.images.config(ref.digest)) is not None:
            await exchange.whole(200, _BLOB_TYPE, config, ref.digest)
            return
        if exchange.head_only:
            with trio.fail_after(self.limits.answer_seconds):
                size = await client.stat_blob(ref, ref.digest)
            headers = [("Content-Type", _BLOB_TYPE), ("Content-Length", str(size))]
            await exchange.head(200, [*headers, ("Docker-Content-Digest", ref.digest)])
            await exchange.end()
            return
        await self._relay_blob(exchange, client, ref, ref.digest, request.range)

    async def _relay_blob(
        self,
        exchange: _Exchange,
        client: RegistryClient,
        ref: Reference,
        digest: str,
        wanted: str | None,
    ) -> None:
        async with AsyncExitStack() as stack:
            with trio.fail_after(self.limits.answer_seconds):
                upstream = await stack.enter_async_context(
                    client.open_blob(ref, digest, {"Range": wanted} if wanted else None)
                )
            headers = [("Content-Type", _BLOB_TYPE), ("Docker-Content-Digest", digest)]
            for name in ("content-length", "content-range", "accept-ranges"):
                if name in upstream.headers:
                    headers.append((name, upstream.headers[name]))
            await exchange.head(upstream.status_code, headers)
            length = upstream.headers.get("content-length", "")
            size = int(length) if length.isdigit() else None
            with trio.fail_after(self.limits.body_seconds(size)):
                async for chunk in upstream.aiter_raw():
                    await exchange.data(chunk)
            await exchange.end()
