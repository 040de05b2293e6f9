"""``lazy2dfs pull``'s side of ``/pull``: what the command shows and says when the daemon's
stream of events ends well, with an error, or not at all (a daemon that restarts mid-pull)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazy2dfs.errors import Lazy2dfsError, UnavailableError
from lazy2dfs.status import ControlClient, PullEvent, PullRequest

REQUEST = PullRequest(
    reference="127.0.0.1:5000/m:v1",
    containerd_address="/run/containerd/containerd.sock",
    namespace="default",
    snapshotter="lazy2dfs",
    plain_http=False,
    hosts_dir="",
    config_path="/etc/lazy2dfs/config.toml",
)


class Shown:
    """A ``ProgressSink`` that keeps what it was told to show."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, label: str) -> None:
        self.lines.append(label)

    def update(self, done: int, total: int, label: str | None = None) -> None:
        self.lines.append(f"{label}: {done}/{total}")

    def done(self, summary: str) -> None:
        self.lines.append(summary)


def serve_once(path: Path, events: list[PullEvent]) -> tuple[threading.Thread, list[bytes]]:
    """A control socket that answers one request with ``events``, then closes; and what it
    was asked."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    asked: list[bytes] = []

    def answer() -> None:
        with listener, listener.accept()[0] as connection:
            connection.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request or not request.endswith(b"}"):
                request += connection.recv(65536)
            asked.append(request)
            body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
            connection.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n" + body
            )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread, asked


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "lazy2dfs.control.sock"


def test_the_pull_shows_every_event_and_returns_the_report(control: Path) -> None:
    report = {"image": REQUEST["reference"], "lazy": 2}
    thread, asked = serve_once(
        control,
        [
            PullEvent(step="m:v1: 2 layers"),
            PullEvent(alive=True),
            PullEvent(update=(5, 10, "layer abc")),
            PullEvent(done="2 lazy, 0 present, 0 downloaded"),
            PullEvent(report=report),
        ],
    )
    shown = Shown()
    assert ControlClient(control, timeout=10).pull(REQUEST, shown) == report
    thread.join(10)
    assert shown.lines == ["m:v1: 2 layers", "layer abc: 5/10", "2 lazy, 0 present, 0 downloaded"]
    head, _, body = asked[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /pull HTTP/1.1")
    assert json.loads(body) == REQUEST


def test_an_error_event_is_the_commands_error_word_for_word(control: Path) -> None:
    message = "refusing to pull: the lazy2dfs daemon cannot fetch 127.0.0.1:5000/m:v1"
    thread, _ = serve_once(control, [PullEvent(step="resolving"), PullEvent(error=message)])
    with pytest.raises(Lazy2dfsError) as raised:
        ControlClient(control, timeout=10).pull(REQUEST, Shown())
    thread.join(10)
    assert str(raised.value) == message


def test_a_stream_cut_before_its_end_says_to_pull_again(control: Path) -> None:
    """A daemon that restarts mid-pull: no report, no error line, the connection closes."""
    thread, _ = serve_once(control, [PullEvent(step="m:v1: 2 layers")])
    shown = Shown()
    with pytest.raises(UnavailableError, match="stopped answering before the pull ended"):
        ControlClient(control, timeout=10).pull(REQUEST, shown)
    thread.join(10)
    assert shown.lines == ["m:v1: 2 layers"]


def test_no_daemon_is_named_with_how_to_start_it(control: Path) -> None:
    with pytest.raises(UnavailableError, match=r"daemon is not running.*lazy2dfs serve"):
        ControlClient(control, timeout=10).pull(REQUEST, Shown())
