"""A fault-injecting HTTP proxy in front of the real registry, on 127.0.0.1 only.

It produces what the CNCF registry never does: 200 to a range request, 400 to multi-range,
redirects to "storage" URLs that expire (403), 429 with Retry-After, 5xx bursts, connections
closed without an answer, and Bearer-token auth with its own token endpoint. Each behaviour is
a field of ``Faults``; the proxy runs in a thread and is always shut down by the context manager.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


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
    redirect_blobs: bool = False
    require_bearer: bool = False
    token_lifetime: int = 300
    storage_tokens: set[str] = field(default_factory=set)
    issued_tokens: set[str] = field(default_factory=set)
    token_scopes: list[list[str]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def registry_requests(self, fragment: str = "") -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/v2/") and fragment in s.path]


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
                self.close_connection = True
                return
            status = faults.fail_next.pop(0) if faults.fail_next else None
        if status is not None:
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return self._reply(status, b"", headers)
        if self.path.startswith("/token"):
            return self._token()
        if self.path.startswith("/storage/"):
            token, _, rest = self.path[len("/storage/") :].partition("/")
            if token not in faults.storage_tokens:
                return self._reply(403, b"expired")
            return self._forward("/" + rest, body, authorized=True)
        if faults.require_bearer and self.path.startswith("/v2/"):
            authorization = self.headers.get("Authorization", "")
            if authorization.removeprefix("Bearer ") not in faults.issued_tokens:
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
            self._reply(response.status, data, answer, length if self.command == "HEAD" else None)
        finally:
            upstream.close()

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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
