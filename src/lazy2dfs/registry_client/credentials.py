"""Where registry credentials come from: explicit configuration, then Docker's config.json.

config.json is read the way the Docker CLI reads it: a per-host ``credHelpers`` entry wins,
then the global ``credsStore``, then the base64 ``auth`` in ``auths``. Helpers are the
``docker-credential-<name>`` programs on PATH, asked with ``get`` and the server on stdin.
Secrets are never logged, and lookups are cached per host because helpers can be slow.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.errors import ConfigError

log = get_logger(__name__)

# Docker keeps Docker Hub's credentials under its v1 index URL.
DOCKER_HUB_KEY: Final = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS: Final = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_HELPER_TIMEOUT: Final = 30.0
_TOKEN_USERNAME: Final = "<token>"


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (refresh) token for OAuth2 token servers."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)


def _host_key(server: str) -> str:
    """``https://host:port/path`` → ``host:port``; Docker Hub's aliases → one key."""
    text = server.split("://", 1)[-1].split("/", 1)[0].lower()
    return DOCKER_HUB_KEY if text in _DOCKER_HUB_HOSTS else text


def default_docker_config() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker/config.json"


class CredentialStore:
    """Answers "which credentials for this host?"; ``None`` means anonymous."""

    def __init__(
        self,
        explicit: Mapping[str, Credentials] | None = None,
        docker_config: Path | None = None,
    ) -> None:
        self._explicit = {_host_key(host): creds for host, creds in (explicit or {}).items()}
        self._docker_config = docker_config
        self._cache: dict[str, Credentials | None] = {}

    @property
    def docker_config(self) -> Path | None:
        return self._docker_config

    def lookup(self, host: str) -> Credentials | None:
        """Blocking (a helper may run): call it from a worker thread in async code."""
        key = _host_key(host)
        if key in self._explicit:
            return self._explicit[key]
        if key not in self._cache:
            self._cache[key] = self._from_docker_config(key)
        return self._cache[key]

    def _from_docker_config(self, key: str) -> Credentials | None:
        if self._docker_config is None or not self._docker_config.is_file():
            return None
        config = _read_config(self._docker_config)
        helpers = config.get("credHelpers") or {}
        auths = config.get("auths") or {}
        server = next((s for s in helpers if _host_key(s) == key), None)
        if server is not None:
            return _from_helper(str(helpers[server]), server)
        if config.get("credsStore"):
            server = next((s for s in auths if _host_key(s) == key), key)
            return _from_helper(str(config["credsStore"]), server)
        for server, entry in auths.items():
            if _host_key(server) == key and isinstance(entry, dict):
                return _from_auth_entry(entry, server)
        return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read Docker config: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: Docker config is not a JSON object")
    return config


def _from_auth_entry(entry: Mapping[str, Any], server: str) -> Credentials | None:
    identity = str(entry.get("identitytoken") or "")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"auths[{server!r}].auth is not base64 of user:password") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise ConfigError(f"auths[{server!r}].auth is not base64 of user:password")
        return Credentials(username, password, identity)
    if entry.get("username"):
        return Credentials(str(entry["username"]), str(entry.get("password", "")), identity)
    return Credentials(identity_token=identity) if identity else None


def _from_helper(helper: str, server: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"credential helper {program} failed: {err}") from None
    if result.returncode != 0:
        message = result.stdout.decode(errors="replace").strip()
        if "credentials not found" in message.lower():
            return None
        raise ConfigError(f"credential helper {program} exited {result.returncode}: {message}")
    try:
        answer = json.loads(result.stdout)
        username, secret = str(answer["Username"]), str(answer["Secret"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"credential helper {program} gave an unreadable answer") from None
    log.debug("credentials from helper", helper=program, server=server)
    if username == _TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username, secret)
