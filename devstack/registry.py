"""The CNCF distribution registry on loopback, for tests, the demo and benchmarks.

It listens on ``127.0.0.1`` at a free port, keeps blobs in a directory we choose (so tests can
corrupt one on purpose), allows deletes, and writes its log, access log included, to a file:
``requests()`` reads back which URLs were asked for, e.g. to check that a lazy pull fetched
only some chunks of a blob.

``auth=`` (optional) makes it ask for credentials: :class:`~devstack.auth.HtpasswdAuth`
for Basic, or :class:`~devstack.auth.TokenAuth` (from a ``TokenServer``) for Bearer.
``tls=`` (optional, :class:`~devstack.auth.TlsFiles`) makes it serve HTTPS.

``proxy_remote=URL`` runs it as a pull-through cache of the registry at ``URL`` (``proxy:
remoteurl``), as fleets deploy it per zone: read-only, it fetches what it does not hold from
there — a range request for a blob it does not hold yet gets 200 and the whole blob.
``network=`` (optional) runs it in a :class:`~devstack.network.PrivateNetwork`, on an address
that is not loopback, as a registry elsewhere on the network would be.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import trio

from devstack.images import BuiltImage, Stock2dfsImage, push_image, push_stock_2dfs_image
from devstack.network import PrivateNetwork
from devstack.process import ChildProcess
from devstack.service import Service
from lazy2dfs.errors import UnavailableError
from lazy2dfs.registry_client import RegistryClient

if TYPE_CHECKING:  # auth needs bcrypt and cryptography, which only tests install
    from devstack.auth import RegistryAuth, TlsFiles

REGISTRY_BINARY: Final = "/usr/bin/docker-registry"
START_TIMEOUT: Final = 20.0
_START_ATTEMPTS: Final = 3  # a free port can be taken by someone else before the registry binds

_CONFIG: Final = """\
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  headers:
    X-Content-Type-Options: [nosniff]
"""

# Apache combined log lines, as the registry's access log writes them.
_ACCESS_LINE = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-) ')


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int
    size: int  # response body bytes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalRegistry(Service):
    """A registry under ``workdir``; ``host`` is ``127.0.0.1:<port>`` once started."""

    def __init__(
        self,
        workdir: Path,
        storage: Path | None = None,
        *,
        auth: RegistryAuth | None = None,
        tls: TlsFiles | None = None,
        proxy_remote: str | None = None,
        network: PrivateNetwork | None = None,
    ) -> None:
        self.workdir = workdir
        self.auth = auth
        self.tls = tls
        self.proxy_remote = proxy_remote
        self.network = network
        self.storage = storage or workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.access_log_path = workdir / "registry.log"
        self.host = ""
        self.process: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> Self:
        if shutil.which(REGISTRY_BINARY) is None:
            raise UnavailableError(f"{REGISTRY_BINARY} is missing: run 'make deps'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        failure: UnavailableError | None = None
        for _ in range(_START_ATTEMPTS):
            address = self.network.address if self.network else "127.0.0.1"
            try:
                return self._start_on(f"{address}:{free_port()}")
            except UnavailableError as err:
                failure = err
        assert failure is not None
        raise failure

    def restart(self) -> None:
        """Stops the registry and starts it again on the same address, as a registry that
        restarts does (connections refused meanwhile)."""
        self.stop()
        self._start_on(self.host)

    def _start_on(self, host: str) -> Self:
        self.host = host
        self.config_path.write_text(self._config())
        argv = [REGISTRY_BINARY, "serve", str(self.config_path)]
        self.process = ChildProcess(
            "docker-registry",
            self.network.argv(*argv) if self.network else argv,
            self.access_log_path,
        )
        try:
            self.process.wait_until(self._answers, START_TIMEOUT, "serving /v2/")
        except UnavailableError:
            self.stop()
            raise
        return self

    def _config(self) -> str:
        config = _CONFIG.format(storage=self.storage, addr=self.host)
        if self.tls is not None:
            config += f"  tls:\n    certificate: {self.tls.certificate}\n    key: {self.tls.key}\n"
        if self.proxy_remote is not None:
            config += f"proxy:\n  remoteurl: {self.proxy_remote}\n"
        if self.auth is None:
            return config
        from devstack.auth import write_registry_auth

        return config + write_registry_auth(self.auth, self.workdir)

    def _answers(self) -> bool:
        if self.network is not None:
            return self.network.run(self._answers_here)
        return self._answers_here()

    def _answers_here(self) -> bool:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.certificate))
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as err:
            # With auth on, an anonymous /v2/ is refused with a challenge: that is serving.
            return self.auth is not None and err.code == 401
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def push(self, name: str, image: BuiltImage | Stock2dfsImage) -> str:
        """Uploads ``image`` as ``name`` (``repository:tag``), without credentials; returns its
        reference here."""
        ref = f"{self.host}/{name}"

        async def upload() -> None:
            async with RegistryClient(plain_http=[self.host]) as client:
                if isinstance(image, Stock2dfsImage):
                    await push_stock_2dfs_image(client, ref, image)
                else:
                    await push_image(client, ref, image)

        if self.network is not None:
            self.network.run(lambda: trio.run(upload))
        else:
            trio.run(upload)
        return ref

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (tests corrupt it on purpose)."""
        algorithm, hex_digest = digest.split(":", 1)
        return (
            self.storage
            / "docker/registry/v2/blobs"
            / algorithm
            / hex_digest[:2]
            / hex_digest
            / "data"
        )

    def requests(self) -> list[LoggedRequest]:
        """Every request in the access log so far, oldest first."""
        text = self.access_log_path.read_text(errors="replace")
        return [
            LoggedRequest(
                m.group(1),
                m.group(2),
                int(m.group(3)),
                0 if m.group(4) == "-" else int(m.group(4)),
            )
            for m in _ACCESS_LINE.finditer(text)
        ]


class Served:
    """Bytes ``registry`` (and ``more`` registries, such as a second server on the same
    storage) serve from now on (GET response bodies, from their access logs)."""

    def __init__(self, registry: LocalRegistry, *more: LocalRegistry) -> None:
        self.registries = (registry, *more)
        self.starts = [len(r.requests()) for r in self.registries]

    def requests(self) -> list[LoggedRequest]:
        """Requests since this was made, registry by registry."""
        return [
            request
            for registry, start in zip(self.registries, self.starts, strict=True)
            for request in registry.requests()[start:]
        ]

    def bytes(self, digests: Collection[str] | None = None) -> int:
        """All bytes served, or only those of blobs named in ``digests``."""
        return sum(
            r.size
            for r in self.requests()
            if r.method == "GET"
            and (digests is None or r.path.split("?", 1)[0].rsplit("/", 1)[-1] in digests)
        )
