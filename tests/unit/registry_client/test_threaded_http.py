"""The http.client transport against a small HTTP/1.1 server on loopback: what a caller of
httpx would notice — bytes as sent, a body cut short is an error, connections reused, a stalled
body given up on without a thread or a connection left behind."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trio

from lazy2dfs.registry_client.threaded_http import ThreadedTransport

BODY = os.urandom(3 * 1024 * 1024 + 17)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections: list[socket.socket] = []
        self.requests: list[dict[str, str]] = []
        self.cut_after: int | None = None  # bytes of the next body before the connection ends
        self.stall = threading.Event()  # set: bodies stop after their first MiB until cleared
        self.chunked = False

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        assert isinstance(request, socket.socket)
        self.connections.append(request)
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.server.requests.append(dict(self.headers.items()))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()

    def do_GET(self) -> None:
        self.server.requests.append(dict(self.headers.items()))
        body, status = BODY, 200
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and "," not in wanted:
            first, last = wanted.removeprefix("bytes=").split("-")
            end = int(last) + 1 if last else len(BODY)
            body, status = BODY[int(first) : end], 206
        self.send_response(status)
        if self.server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 65536):
                piece = body[start : start + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, self.server.cut_after = self.server.cut_after, None
        if cut is not None:
            self.wfile.write(body[:cut])
            self.close_connection = True
            return
        if self.server.stall.is_set():
            self.wfile.write(body[: 1 << 20])
            self.wfile.flush()
            while self.server.stall.is_set():
                time.sleep(0.02)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stall.clear()
    server.shutdown()
    server.server_close()


def client() -> httpx.AsyncClient:
    timeout = httpx.Timeout(10.0, connect=5.0)
    transport = ThreadedTransport(ssl.create_default_context(), timeout, httpx.AsyncHTTPTransport())
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v2/m/blobs/sha256:x"


def test_ranges_and_whole_bodies_arrive_as_sent_on_one_kept_connection(server: Server) -> None:
    async def main() -> None:
        async with client() as http:
            whole = await http.get(url(server))
            part = await http.get(url(server), headers={"Range": "bytes=100-1048675"})
            rest = await http.get(url(server), headers={"Range": "bytes=5-"})
            head = await http.head(url(server))
        assert whole.status_code == 200 and whole.content == BODY
        assert part.status_code == 206 and part.content == BODY[100:1048676]
        assert rest.content == BODY[5:]
        assert head.headers["content-length"] == str(len(BODY)) and head.content == b""

    trio.run(main)
    assert len(server.connections) == 1
    assert server.requests[1]["Range"] == "bytes=100-1048675"  # names as httpx spells them


def test_a_chunked_body_arrives_whole(server: Server) -> None:
    server.chunked = True

    async def main() -> None:
        async with client() as http:
            assert (await http.get(url(server))).content == BODY

    trio.run(main)


@pytest.mark.parametrize("ranges", ["", "bytes=0-3145744"], ids=["streamed", "range"])
def test_a_body_cut_short_is_an_error_not_a_shorter_body(server: Server, ranges: str) -> None:
    server.cut_after = 1000

    async def main() -> None:
        async with client() as http:
            headers = {"Range": ranges} if ranges else {}
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(url(server), headers=headers)
            # The broken connection is not reused.
            assert (await http.get(url(server))).content == BODY

    trio.run(main)
    assert len(server.connections) == 2


def test_a_connection_the_server_closed_while_idle_is_replaced(server: Server) -> None:
    async def main() -> None:
        async with client() as http:
            assert (await http.get(url(server))).content == BODY
            for connection in server.connections:
                connection.shutdown(socket.SHUT_RDWR)
            await trio.sleep(0.1)
            assert (await http.get(url(server))).content == BODY

    trio.run(main)
    assert len(server.connections) == 2


def test_a_stalled_body_given_up_on_frees_its_thread_and_its_connection(server: Server) -> None:
    server.stall.set()

    async def main() -> None:
        async with client() as http:
            started = trio.current_time()
            with trio.move_on_after(0.5):
                await http.get(url(server))
            assert trio.current_time() - started < 2.0, "the caller waited on the thread"
            server.stall.clear()
            assert (await http.get(url(server))).content == BODY

    trio.run(main)
    assert len(server.connections) == 2, "the abandoned connection was not reused"
