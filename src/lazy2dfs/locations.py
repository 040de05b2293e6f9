"""Where the daemon's configuration and sockets are, without the configuration model.

``lazy2dfs pull`` and ``lazy2dfs status --health`` (a kubelet exec probe) only talk to the
daemon: they need its control socket, nothing else of the configuration. Loading the model
(``config.load``, pydantic) took 0.32 s of a command's start with a cold page cache, and
``lazy2dfs pull`` 0.42 s in all; this reads the one setting with the standard library, by the
same rules (``LAZY2DFS_ADDRESS`` over the file's ``address``, over the default). A test holds
it to ``config.load``. The daemon itself validates its configuration when it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lazy2dfs.errors import InvalidArgumentError

DEFAULT_CONFIG_PATH = Path("/etc/lazy2dfs/config.toml")
ENV_PREFIX = "LAZY2DFS_"
DEFAULT_ADDRESS = Path("/run/lazy2dfs/lazy2dfs.sock")


def control_address(address: Path) -> Path:
    """The daemon's control socket, beside its gRPC ``address`` (root only, always on while
    it serves): ``lazy2dfs status`` and ``lazy2dfs pull`` ask the daemon there."""
    return address.with_suffix(".control.sock")


def read_file(path: Path | None) -> dict[str, object]:
    """The configuration file's settings: ``path``, else the default file if it exists."""
    # Imported here: ``lazy2dfs pull`` and ``status`` told the address by the environment
    # start without it (15 ms of a cold start, before the pull's first request).
    import tomllib

    file = path or DEFAULT_CONFIG_PATH
    if path is None and not file.exists():
        return {}
    try:
        return tomllib.loads(file.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgumentError(f"configuration file {file} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"configuration file {file} is not TOML: {exc}") from exc


def daemon_control_address(path: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The control socket of the daemon configured by ``path`` (or the default file) and the
    environment."""
    environ = os.environ if env is None else env
    address = environ.get(ENV_PREFIX + "ADDRESS") or read_file(path).get("address")
    return control_address(Path(str(address)) if address else DEFAULT_ADDRESS)
