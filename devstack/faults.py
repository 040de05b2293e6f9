"""A fault-injecting HTTP proxy in front of the real registry, on 127.0.0.1 only.

It produces what the CNCF registry never does: 200 to a range request, 400 to multi-range,
redirects to "storage" URLs that expire (403), 429 with Retry-After, 5xx bursts, connections
closed without an answer, answers that pause first, blob bodies cut short or with a byte
flipped, Bearer-token auth with its own token endpoint and tokens that expire, and a registry
that accepts connections and never answers again. Each behaviour is a field of ``Faults``;
``Faults.injected`` counts the faults served, by kind. The proxy runs in a thread and is always
shut down by the context manager. Tests of the registry client and the reliability benchmark
share it, so both inject the same faults.
"""

from __future__ import annotations

import collections
import http.client
import itertools
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
BLACKHOLE_LIMIT = 600.0  # a held request is let go by then even if the proxy is never closed

# Kinds counted in ``Faults.injected``.
RESET = "reset"
STALL = "stall"
SERVER_ERROR = "5xx"
TOO_MANY = "429"
TRUNCATED = "truncated"
CORRUPTED = "corrupted body"
EXPIRED_TOKEN = "expired token"
EXPIRED_REDIRECT = "expired redirect URL"
BLACKHOLE = "blackhole"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Faults:
    ignore_range: bool = False
    refuse_multi_range: bool = False
    fail_next: list[int] = field(default_factory=list)  # statuses for the next requests
    retry_after: str | None = None
    reset_next: int = 0  # requests to drop without an answer
    stall_next: int = 0  # requests answered only after ``stall_seconds``
    stall_seconds: float = 1.0
    truncate_next: int = 0  # blob GETs whose body stops halfway, connection closed
    corrupt_next: int = 0  # blob GETs with one byte of the body flipped
    blackhole: bool = False  # every request is held unanswered: a registry gone for good
    redirect_blobs: bool = False
    require_bearer: bool = False
    token_lifetime: int = 300
    storage_tokens: set[str] = field(default_factory=set)
    issued_tokens: set[str] = field(default_factory=set)
    expired_tokens: set[str] = field(default_factory=set)
    token_scopes: list[list[str]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    injected: collections.Counter[str] = field(default_factory=collections.Counter)

    def registry_requests(self, fragment: str = "") -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/v2/") and fragment in s.path]

    def expire_tokens(self) -> None:
        """Every Bearer token issued so far is refused from now on (401), as a registry does
        once a token's lifetime is over."""
        with self.lock:
            self.expired_tokens |= self.issued_tokens
            self.issued_tokens.clear()

    def expire_redirects(self) -> None:
        """Every pre-signed storage URL handed out so far answers 403 from now on."""
        with self.lock:
            self.storage_tokens.clear()

    def disarm(self) -> None:
        """Drops the one-shot faults not met yet (a read served from the cache meets none)."""
        with self.lock:
            self.fail_next.clear()
            self.reset_next = self.stall_next = self.truncate_next = self.corrupt_next = 0

    def count(self, kind: str) -> None:
        with self.lock:
            self.injected[kind] += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        faults = self.server.faults
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with faults.lock:
            faults.seen.append(Seen(self.command, self.path, dict(self.headers)))
            if faults.reset_next > 0:
                faults.reset_next -= 1
                faults.injected[RESET] += 1
                self.close_connection = True
                return
            stall, faults.stall_next = faults.stall_next > 0, max(0, faults.stall_next - 1)
            status = faults.fail_next.pop(0) if faults.fail_next else None
        if faults.blackhole:
            faults.count(BLACKHOLE)
            self.server.closing.wait(BLACKHOLE_LIMIT)
            self.close_connection = True
            return
        if stall:
            faults.count(STALL)
            time.sleep(faults.stall_seconds)
        if status is not None:
            faults.count(TOO_MANY if status == 429 else SERVER_ERROR)
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return self._reply(status, b"", headers)
        if self.path.startswith("/token"):
            return self._token()
        if self.path.startswith("/storage/"):
            token, _, rest = self.path[len("/storage/") :].partition("/")
            if token not in faults.storage_tokens:
                faults.count(EXPIRED_REDIRECT)
                return self._reply(403, b"expired")
            return self._forward("/" + rest, body, authorized=True)
        if faults.require_bearer and self.path.startswith("/v2/"):
            authorization = self.headers.get("Authorization", "")
            token = authorization.removeprefix("Bearer ")
            if token in faults.expired_tokens:
                faults.count(EXPIRED_TOKEN)
            if token not in faults.issued_tokens:
                realm = f"http://{self.server.host}/token"
                challenge = f'Bearer realm="{realm}",service="fake-registry"'
                return self._reply(401, b"", {"WWW-Authenticate": challenge})
        if faults.redirect_blobs and self.command == "GET" and "/blobs/sha256:" in self.path:
            token = f"s{next(faults.counter)}"
            faults.storage_tokens.add(token)
            location = f"http://{self.server.host}/storage/{token}{self.path}"
            return self._reply(307, b"", {"Location": location})
        self._forward(self.path, body, authorized=False)

    def _token(self) -> None:
        faults = self.server.faults
        query = parse_qs(urlsplit(self.path).query)
        token = f"t{next(faults.counter)}"
        with faults.lock:
            faults.token_scopes.append(query.get("scope", []))
            faults.issued_tokens.add(token)
        answer = f'{{"token":"{token}","expires_in":{faults.token_lifetime}}}'.encode()
        self._reply(200, answer, {"Content-Type": "application/json"})

    def _forward(self, path: str, body: bytes, authorized: bool) -> None:
        faults = self.server.faults
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Authorization", None)
        wanted = headers.get("Range", "")
        if faults.refuse_multi_range and "," in wanted:
            return self._reply(400, b"multi-range not supported")
        if faults.ignore_range:
            headers.pop("Range", None)
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            upstream.request(self.command, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            answer = {
                k: v.replace(self.server.upstream, self.server.host)
                for k, v in response.getheaders()
                if k.lower() not in _HOP_BY_HOP
            }
            length = response.getheader("Content-Length")
            if self.command == "HEAD":
                return self._reply(response.status, data, answer, length)
            if response.status in (200, 206) and "/blobs/sha256:" in path:
                return self._blob_body(response.status, data, answer)
            self._reply(response.status, data, answer)
        finally:
            upstream.close()

    def _blob_body(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        """A blob's bytes, cut short or with a byte flipped if the faults say so."""
        faults = self.server.faults
        with faults.lock:
            truncate, faults.truncate_next = (
                faults.truncate_next > 0,
                max(0, faults.truncate_next - 1),
            )
            corrupt, faults.corrupt_next = faults.corrupt_next > 0, max(0, faults.corrupt_next - 1)
        if truncate and data:
            faults.count(TRUNCATED)
            self.close_connection = True
            return self._reply(status, data[: len(data) // 2], headers, str(len(data)))
        if corrupt and data:
            faults.count(CORRUPTED)
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 0xFF
            data = bytes(flipped)
        self._reply(status, data, headers)

    def _reply(
        self,
        status: int,
        data: bytes,
        headers: dict[str, str] | None = None,
        length: str | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.faults = faults
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.closing = threading.Event()  # lets blackholed requests go at shutdown


class FaultProxy:
    """``host`` forwards to ``upstream`` (a LocalRegistry) unless ``faults`` says otherwise."""

    def __init__(self, upstream: str) -> None:
        self.faults = Faults()
        self._server = _Server(upstream, self.faults)
        self.host = self._server.host
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
