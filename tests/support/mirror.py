"""An HTTP blob server on 127.0.0.1 that behaves like the CNCF registry, plain or in
pull-through (proxy) mode, with counters of what it and its origin sent.

As a mirror (``FakeRegistry(blobs, mirror=True)``) it answers a GET or HEAD of a blob it does
not hold yet with 200 and the whole blob, Range or not, as ``docker-registry`` 2.8 with
``proxy: remoteurl`` does: such an answer costs its origin what it copies to the client (all
of the blob for a HEAD, whose body the registry reads and drops; for a GET what went out
before the client closed) and, for the first one, the blob once more to store it
(``origin_bytes``); it holds the blob once that store is done (``answer_delay``, then the
blob's transfer time after the first request) and answers ranges with 206 from then on. As
a plain registry it answers ranges with 206 at once. Blobs go out at ``rate`` bytes per
second, so that requests overlap as they do on a network. ``cut_after`` ends the next
whole-blob answer after that many bytes and stops the server: a mirror that goes down in the
middle of a rollout; ``oversized_ranges`` answers every range with all of the blob.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_BLOB_PATH = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")
_PIECE = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        fake = self.server.fake
        match = _BLOB_PATH.match(self.path.split("?", 1)[0])
        data = fake.blobs.get(match.group(1)) if match else None
        if match is None or data is None:
            return self._send(404, {}, b"")
        digest = match.group(1)
        wanted = self.headers.get("Range", "")
        with fake.lock:
            fake.requests.append((self.command, digest, wanted))
            if self.command == "GET":
                fake.gets += 1
            if fake.stopped:
                self.close_connection = True
                return
            holds = fake.holds(digest)
            if not holds and digest not in fake.filling:
                fake.filling[digest] = time.monotonic() + fake.answer_delay + len(data) / fake.rate
                fake.origin_bytes += len(data)
        if not holds:
            time.sleep(fake.answer_delay)
        if holds and wanted:
            return self._ranges(data, "bytes=0-" if fake.oversized_ranges else wanted)
        if not holds:
            fake.whole_answers += 1
        self._send(200, {"Content-Type": "application/octet-stream"}, data, copied=not holds)

    def _ranges(self, data: bytes, header: str) -> None:
        ranges = []
        for spec in header.removeprefix("bytes=").split(","):
            start, _, end = spec.partition("-")
            ranges.append((int(start), int(end) if end else len(data) - 1))
        if len(ranges) == 1:
            first, last = ranges[0]
            content_range = f"bytes {first}-{last}/{len(data)}"
            headers = {"Content-Range": content_range, "Content-Type": "application/octet-stream"}
            return self._send(206, headers, data[first : last + 1])
        boundary = uuid.uuid4().hex
        body = b""
        for first, last in ranges:
            body += (
                (
                    f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {first}-{last}/{len(data)}\r\n\r\n"
                ).encode()
                + data[first : last + 1]
                + b"\r\n"
            )
        body += f"--{boundary}--\r\n".encode()
        self._send(206, {"Content-Type": f"multipart/byteranges; boundary={boundary}"}, body)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, copied: bool = False
    ) -> None:
        fake = self.server.fake
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            if copied:
                with fake.lock:
                    fake.origin_bytes += len(body)
            return
        limit = len(body)
        if copied and fake.cut_after is not None:
            limit, fake.cut_after = min(limit, fake.cut_after), None
        sent = 0
        while sent < limit:
            piece = body[sent : min(limit, sent + _PIECE)]
            try:
                self.wfile.write(piece)
            except OSError:
                return
            sent += len(piece)
            with fake.lock:
                fake.sent_bytes += len(piece)
                if copied:  # a copy from the origin, as it goes
                    fake.origin_bytes += len(piece)
            time.sleep(len(piece) / fake.rate)
        if limit < len(body):
            fake.stop()
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeRegistry) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class FakeRegistry:
    """Serves ``blobs`` (digest → bytes) under any repository; ``host`` once entered."""

    def __init__(self, blobs: dict[str, bytes], mirror: bool, rate: float = 20e6) -> None:
        self.blobs = blobs
        self.mirror = mirror
        self.rate = rate
        self.lock = threading.Lock()
        self.filling: dict[str, float] = {}  # digest → when the mirror holds it
        self.requests: list[tuple[str, str, str]] = []  # (method, digest, Range)
        self.gets = 0
        self.whole_answers = 0
        self.origin_bytes = 0  # what a mirror's origin sent it
        self.sent_bytes = 0  # what this server sent its clients
        self.cut_after: int | None = None
        self.oversized_ranges = False  # a 206 of the whole blob, whatever the range asked
        # Seconds a mirror takes to answer for a blob it does not hold (it asks its origin
        # first; so does its store, which begins as late).
        self.answer_delay = 0.0
        self.stopped = False
        self._server = _Server(self)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def holds(self, digest: str) -> bool:
        if not self.mirror:
            return True
        ready = self.filling.get(digest)
        return ready is not None and time.monotonic() >= ready

    def stop(self) -> None:
        """From now on connections are accepted and closed without an answer."""
        self.stopped = True

    def __enter__(self) -> FakeRegistry:
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
