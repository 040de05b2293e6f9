"""Where requests for a registry go: containerd's ``hosts.toml`` mirrors, TLS and plain HTTP.

For registry ``R`` the directory ``<hosts_dir>/R`` (``host_port_`` or ``host:port`` for hosts
with a port, else ``_default``) may hold a ``hosts.toml``: ``[host."…"]`` mirrors in file order,
then the ``server`` (or the registry itself). Each endpoint has capabilities (``pull``,
``resolve``, ``push``), TLS settings (``ca``, ``client``, ``skip_verify``) and a path
(``/v2`` appended unless ``override_path``). A directory without ``hosts.toml`` may hold
``*.crt`` CAs and ``*.cert``/``*.key`` client pairs, as in Docker's ``certs.d``.

Plain HTTP is used only where it cannot leak across a network by accident: loopback hosts,
hosts the caller marks insecure (``plain_http``), or an explicit ``http://`` in hosts.toml.
Everything else is HTTPS with certificate verification.

The daemon reads the hosts.toml files containerd reads, which name the daemon's own partition
mirror in front of the registry: ``skip`` leaves such endpoints out, so that the mirror never
asks itself and lazy reads go to the registry without a detour through it.
"""

from __future__ import annotations

import enum
import ipaddress
import ssl
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from lazy2dfs.registry_client.errors import ConfigError
from lazy2dfs.registry_client.reference import DOCKER_HUB

DOCKER_HUB_ENDPOINT: Final = "registry-1.docker.io"


class Capability(enum.Flag):
    PULL = enum.auto()
    RESOLVE = enum.auto()
    PUSH = enum.auto()


ALL_CAPABILITIES: Final = Capability.PULL | Capability.RESOLVE | Capability.PUSH


@dataclass(frozen=True)
class TlsSettings:
    skip_verify: bool = False
    ca_files: tuple[Path, ...] = ()
    client_pairs: tuple[tuple[Path, Path | None], ...] = ()  # (cert, key or None if in cert)

    @property
    def is_default(self) -> bool:
        return self == TlsSettings()

    def ssl_context(self) -> ssl.SSLContext:
        """System CAs plus ``ca_files``, client certificates, and no checks if ``skip_verify``."""
        context = ssl.create_default_context()
        try:
            for ca in self.ca_files:
                context.load_verify_locations(cafile=str(ca))
            for cert, key in self.client_pairs:
                context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"cannot load TLS files: {err}") from None
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True)
class Endpoint:
    """One place that serves a registry's API: the registry itself or a mirror."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: Capability = ALL_CAPABILITIES
    tls: TlsSettings = field(default_factory=TlsSettings)
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def url(self, repository: str, kind: str, name: str = "") -> str:
        """``<base>/<repository>/<kind>/<name>``, e.g. ``…/library/busybox/blobs/sha256:…``."""
        return f"{self.base_url}/{repository}/{kind}/{name}"


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1, with or without a port."""
    name = urlsplit("//" + host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def reaches(host: str, listener: str) -> bool:
    """Whether a request to ``host`` (``host:port``) lands on a socket bound to ``listener``:
    same port, and the same host, or both loopback, or a listener on every address."""
    target, bound = urlsplit("//" + host), urlsplit("//" + listener)
    try:
        if target.port is None or target.port != bound.port:
            return False
    except ValueError:  # a port outside 0..65535
        return False
    wildcard = bound.hostname in ("0.0.0.0", "::")
    both_loopback = is_loopback(host) and is_loopback(listener)
    return wildcard or both_loopback or target.hostname == bound.hostname


class RegistryHosts:
    """Resolves a registry name from a reference to its endpoints, in the order to try them."""

    def __init__(
        self,
        hosts_dir: Path | None = None,
        plain_http: bool | Collection[str] = False,
        skip: Collection[str] = (),
    ) -> None:
        self._hosts_dir = hosts_dir
        self._plain_http = plain_http
        self._skip = tuple(skip)

    def endpoints(self, registry: str) -> list[Endpoint]:
        directory = self._host_directory(registry)
        configured = _load_directory(directory) if directory is not None else []
        configured = [e for e in configured if not any(reaches(e.host, own) for own in self._skip)]
        if not configured or configured[-1].host == "":
            default = self._default_endpoint(registry)
            last = configured.pop() if configured else Endpoint("", "")
            configured.append(
                Endpoint(
                    default.scheme,
                    default.host,
                    default.path,
                    last.capabilities,
                    last.tls,
                    last.headers,
                )
            )
        return configured

    def source(self, registry: str) -> Path | None:
        """The directory (with its hosts.toml, if any) that configures ``registry``."""
        return self._host_directory(registry)

    @property
    def hosts_dir(self) -> Path | None:
        return self._hosts_dir

    def _host_directory(self, registry: str) -> Path | None:
        if self._hosts_dir is None:
            return None
        candidates = []
        host, colon, port = registry.rpartition(":")
        if colon and host and port.isdigit():
            candidates.append(self._hosts_dir / f"{host}_{port}_")
        candidates += [self._hosts_dir / registry, self._hosts_dir / "_default"]
        return next((c for c in candidates if c.is_dir()), None)

    def _insecure(self, registry: str) -> bool:
        if isinstance(self._plain_http, bool):
            return self._plain_http
        return registry in self._plain_http

    def _default_endpoint(self, registry: str) -> Endpoint:
        if registry == DOCKER_HUB:
            return Endpoint("https", DOCKER_HUB_ENDPOINT)
        plain = is_loopback(registry) or self._insecure(registry)
        return Endpoint("http" if plain else "https", registry)


def _load_directory(directory: Path) -> list[Endpoint]:
    hosts_file = directory / "hosts.toml"
    if hosts_file.is_file():
        return parse_hosts_toml(hosts_file.read_text(), directory)
    return [_cert_directory_endpoint(directory)]


def _cert_directory_endpoint(directory: Path) -> Endpoint:
    ca_files = tuple(sorted(directory.glob("*.crt")))
    pairs: list[tuple[Path, Path | None]] = []
    for cert in sorted(directory.glob("*.cert")):
        key = cert.with_suffix(".key")
        pairs.append((cert, key if key.is_file() else None))
    return Endpoint("", "", tls=TlsSettings(False, ca_files, tuple(pairs)))


def parse_hosts_toml(text: str, base_dir: Path) -> list[Endpoint]:
    """The endpoints of one hosts.toml: mirrors in file order, then the server.

    The server comes back with host ``""`` when the file names none, so the caller fills in
    the registry's default. Relative certificate paths are relative to ``base_dir``.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{base_dir}/hosts.toml: {err}") from None
    mirrors = document.get("host", {})
    if not isinstance(mirrors, dict):
        raise ConfigError(f"{base_dir}/hosts.toml: 'host' must be a table of tables")
    endpoints = [_endpoint(url, config, base_dir) for url, config in mirrors.items()]
    server = document.get("server", "")
    if not isinstance(server, str):
        raise ConfigError(f"{base_dir}/hosts.toml: 'server' must be a string")
    endpoints.append(_endpoint(server, document, base_dir))
    return endpoints


def _endpoint(server: str, config: Mapping[str, Any], base_dir: Path) -> Endpoint:
    where = f"{base_dir}/hosts.toml [{server or 'server'}]"
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: must be a table")
    scheme, host, path = "", "", ""
    if server:
        parts = urlsplit(server if "://" in server else "https://" + server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}: {server!r} is not an http(s) URL")
        scheme, host = parts.scheme, parts.netloc
        path = parts.path.rstrip("/")
        if not config.get("override_path", False) and not path.endswith("/v2"):
            path += "/v2"
    return Endpoint(
        scheme,
        host,
        path or "/v2",
        _capabilities(config.get("capabilities"), where),
        TlsSettings(
            _bool(config.get("skip_verify", False), "skip_verify", where),
            tuple(_paths(config.get("ca"), base_dir, where)),
            tuple(_client_pairs(config.get("client"), base_dir, where)),
        ),
        tuple(_headers(config.get("header", {}), where)),
    )


def _bool(value: object, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be true or false")
    return value


def _capabilities(value: object, where: str) -> Capability:
    if value is None:
        return ALL_CAPABILITIES
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: capabilities must be a non-empty list")
    result = Capability(0)
    for name in value:
        try:
            result |= Capability[str(name).upper()]
        except KeyError:
            raise ConfigError(f"{where}: unknown capability {name!r}") from None
    return result


def _paths(value: object, base_dir: Path, where: str) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: ca must be a path or a list of paths")
    return [base_dir / item for item in items]


def _client_pairs(value: object, base_dir: Path, where: str) -> list[tuple[Path, Path | None]]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{where}: client must be a path or a list")
    pairs: list[tuple[Path, Path | None]] = []
    for item in items:
        if isinstance(item, str):
            pairs.append((base_dir / item, None))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(i, str) for i in item):
            pairs.append((base_dir / item[0], base_dir / item[1]))
        else:
            raise ConfigError(f"{where}: client entries must be a path or [cert, key]")
    return pairs


def _headers(value: object, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: header must be a table")
    headers: list[tuple[str, str]] = []
    for name, item in value.items():
        values = [item] if isinstance(item, str) else item
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: header {name!r} must be a string or list of strings")
        headers.extend((name, v) for v in values)
    return headers
