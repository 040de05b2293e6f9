"""``lazy2dfs pull`` done by the daemon: the command's ``POST /pull`` on the control socket.

The daemon has gRPC, the registry client and its settings loaded already; the command then
needs none of them and starts in a tenth of the time (``lazy2dfs.status``). Each pull runs
``Puller`` in a thread of its own and streams its progress back as ``PullEvent`` lines. At
most ``MAX_PULLS`` run at once: each holds one of the control socket's connections, and the
others stay free for ``status`` and health checks. A client that goes away cancels its pull at
the next progress event; what the pull had prepared is removed, as when a pull fails.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, get_type_hints

import pydantic
import typing_extensions

from lazy2dfs.config import RegistryConfig
from lazy2dfs.containerd.client import ContainerdClient
from lazy2dfs.containerd.pull import Daemon, Puller, PullReport
from lazy2dfs.errors import InvalidArgumentError, Lazy2dfsError, UnavailableError
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client import CredentialStore, SyncRegistryClient, parse_reference
from lazy2dfs.snapshotter.labels import LayerRequest, layer_request
from lazy2dfs.status import PULL_HEARTBEAT, PullEvent, PullRequest

log = get_logger(__name__)

MAX_PULLS = 4
# Byte counts of a download reach the command at most this often (the last one always).
UPDATE_SECONDS = 0.1
# How often a stream waiting for events looks whether the daemon stops.
WAKE_SECONDS = 0.5


def _validated(typed: type) -> Any:
    """``typed`` (a ``typing.TypedDict``) as pydantic validates it: as typing_extensions'
    ``TypedDict``, before Python 3.12. The command's is typing's, which spares it importing
    typing_extensions (20 ms of a cold start, before the pull's first request)."""
    make: Any = typing_extensions.TypedDict
    return make(typed.__name__, get_type_hints(typed))


_REQUEST: pydantic.TypeAdapter[PullRequest] = pydantic.TypeAdapter(_validated(PullRequest))


class PullCancelledError(UnavailableError):
    """The command that asked for the pull went away, or the daemon stops."""


class _Events:
    """A pull's progress as events on a queue (the ``ProgressSink`` ``Puller`` writes to);
    raises ``PullCancelledError`` once nobody reads them."""

    def __init__(self) -> None:
        self.queue: queue.Queue[PullEvent] = queue.Queue()
        self.cancelled = threading.Event()
        self._shown = 0.0

    def step(self, label: str) -> None:
        self._put(PullEvent(step=label))

    def update(self, done: int, total: int, label: str | None = None) -> None:
        now = time.monotonic()
        if done < total and now - self._shown < UPDATE_SECONDS:
            self._put(None)
            return
        self._shown = now
        self._put(PullEvent(update=(done, total, label)))

    def done(self, summary: str) -> None:
        self._put(PullEvent(done=summary))

    def _put(self, event: PullEvent | None) -> None:
        if self.cancelled.is_set():
            raise PullCancelledError("the pull was cancelled: its command went away")
        if event is not None:
            self.queue.put(event)


class PullService:
    """Runs the pulls the control socket is asked for, with the daemon's registry settings
    (and a ``lazy2dfs pull --plain-http`` or ``--hosts-dir`` on top, which ``Puller``'s
    reach checks hold against the daemon's own)."""

    def __init__(
        self,
        daemon: Daemon,
        settings: RegistryConfig,
        credentials: CredentialStore,
        open_ahead: Callable[[list[LayerRequest]], None],
    ) -> None:
        self._daemon = daemon
        self._settings = settings
        self._credentials = credentials
        self._open_ahead = open_ahead
        self._slots = threading.BoundedSemaphore(MAX_PULLS)
        self._closing = threading.Event()

    def start(self, body: bytes) -> Generator[bytes, None, None]:
        """Starts the pull ``body`` asks for; returns its event stream. Raises
        ``InvalidArgumentError`` for a bad request, ``UnavailableError`` when busy."""
        try:
            request = _REQUEST.validate_json(body)
        except pydantic.ValidationError as exc:
            raise InvalidArgumentError(f"not a pull request: {exc}") from exc
        if self._closing.is_set():
            raise UnavailableError("the daemon is stopping")
        if not self._slots.acquire(blocking=False):
            raise UnavailableError(
                f"{MAX_PULLS} pulls are under way in the daemon: run this one when one ends"
            )
        events = _Events()
        threading.Thread(target=self._run, args=(request, events), name="pull", daemon=True).start()
        return self._stream(events)

    def close(self) -> None:
        """Ends every stream (their pulls stop at their next step): the daemon stops."""
        self._closing.set()

    def _run(self, request: PullRequest, events: _Events) -> None:
        try:
            report = self._pull(request, events)
            events.queue.put(PullEvent(report=report.to_json()))
        except Lazy2dfsError as exc:
            events.queue.put(PullEvent(error=str(exc)))
        except Exception as exc:
            log.exception("pull failed", image=request["reference"], error=repr(exc))
            events.queue.put(
                PullEvent(error=f"the daemon failed the pull: {exc!r}; its log has the details")
            )
        finally:
            self._slots.release()

    def _pull(self, request: PullRequest, events: _Events) -> PullReport:
        registry = parse_reference(request["reference"]).registry
        plain_http = [*self._settings.plain_http, *([registry] if request["plain_http"] else [])]
        client = SyncRegistryClient(
            hosts_dir=Path(request["hosts_dir"])
            if request["hosts_dir"]
            else self._settings.hosts_dir,
            plain_http=plain_http,
            credentials=self._credentials,
        )
        containerd = ContainerdClient(Path(request["containerd_address"]), request["namespace"])
        try:
            puller = Puller(
                containerd,
                client,
                self._daemon,
                request["snapshotter"],
                events,
                request["config_path"],
                daemon_settings=not (request["plain_http"] or request["hosts_dir"]),
                ahead=self._ahead,
            )
            return puller.pull(request["reference"])
        finally:
            containerd.close()

    def _ahead(self, labels: list[dict[str, str]]) -> None:
        self._open_ahead([r for r in map(layer_request, labels) if r is not None])

    def _stream(self, events: _Events) -> Generator[bytes, None, None]:
        quiet = 0.0
        try:
            while not self._closing.is_set():
                try:
                    event = events.queue.get(timeout=WAKE_SECONDS)
                except queue.Empty:
                    quiet += WAKE_SECONDS
                    if quiet < PULL_HEARTBEAT:
                        continue
                    event = PullEvent(alive=True)
                quiet = 0.0
                yield json.dumps(event).encode() + b"\n"
                if "report" in event or "error" in event:
                    return
            stopping = PullEvent(error="the daemon stopped during the pull: run it again")
            yield json.dumps(stopping).encode() + b"\n"
        finally:
            events.cancelled.set()
