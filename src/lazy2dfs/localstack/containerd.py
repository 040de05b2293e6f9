"""A private containerd 1.6+ on loopback: its own root, state, sockets and config.

Its configuration is the shipped ``deploy/containerd/config-1.6.toml`` with only what a private
instance must change: paths and sockets under the work directory, the proxy plugin's address,
and plugins that cannot run here (or would only slow the start) disabled, CRI among them. So the
file users install is the file the end-to-end tests and benchmarks run. It keeps the built-in
``overlayfs`` so that benchmarks can compare the two in one run, and starts in well under a
second.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from lazy2dfs.errors import UnavailableError
from lazy2dfs.localstack.process import ChildProcess

START_TIMEOUT = 30.0
CTR_TIMEOUT = 300.0

# The repository's copy: localstack runs from a source checkout (make test, make demo).
SHIPPED_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "containerd" / "config-1.6.toml"
SNAPSHOTTER = "lazy2dfs"
DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def local_config(
    shipped: Mapping[str, Any], workdir: Path, address: Path, snapshotter_address: Path
) -> dict[str, Any]:
    """``shipped`` with a private instance's paths, sockets and disabled plugins."""
    config = copy.deepcopy(dict(shipped))
    proxy = config.get("proxy_plugins", {}).get(SNAPSHOTTER)
    if not isinstance(proxy, dict) or proxy.get("type") != "snapshot":
        raise UnavailableError(f"{SHIPPED_CONFIG} has no snapshot proxy plugin {SNAPSHOTTER!r}")
    proxy["address"] = str(snapshotter_address)
    root = workdir / "root"
    config.update(root=str(root), state=str(workdir / "state"), disabled_plugins=DISABLED_PLUGINS)
    config.setdefault("grpc", {})["address"] = str(address)
    config.setdefault("ttrpc", {})["address"] = f"{address}.ttrpc"
    plugins = config.setdefault("plugins", {})
    plugins.setdefault("io.containerd.internal.v1.opt", {})["path"] = str(root / "opt")
    return config


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: object) -> str:
    """A TOML value; JSON's strings, integers, booleans and arrays of them are TOML too."""
    scalar = (str, bool, int)
    if isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(v, scalar) for v in value)
    ):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {value!r} as TOML here")


def dump_toml(table: Mapping[str, Any], path: tuple[str, ...] = ()) -> str:
    """TOML for what containerd's config uses: tables of strings, integers, booleans, lists."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    text = "\n".join(lines) + "\n" if lines else ""
    for name, sub in table.items():
        if isinstance(sub, dict):
            body = dump_toml(sub, (*path, name))
            if not sub or not all(isinstance(v, dict) for v in sub.values()):
                # A table holding only tables needs no header of its own.
                body = f"\n[{'.'.join(_key(p) for p in (*path, name))}]\n" + body
            text += body
    return text


class LocalContainerd:
    """containerd with everything under ``workdir``; ``ctr`` runs against it."""

    def __init__(self, workdir: Path, snapshotter_address: Path) -> None:
        self.workdir = workdir
        self.address = workdir / "containerd.sock"
        self.config_path = workdir / "config.toml"
        self.snapshotter_address = snapshotter_address
        self.process: ChildProcess | None = None

    def start(self) -> LocalContainerd:
        binary = shutil.which("containerd")
        if binary is None:
            raise UnavailableError("containerd is not installed: run 'make deps'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            shipped = tomllib.loads(SHIPPED_CONFIG.read_text())
        except FileNotFoundError:
            raise UnavailableError(f"{SHIPPED_CONFIG} is missing: run from a checkout") from None
        config = local_config(shipped, self.workdir, self.address, self.snapshotter_address)
        self.config_path.write_text(dump_toml(config))
        self.address.unlink(missing_ok=True)
        self.process = ChildProcess(
            "containerd",
            [binary, "--config", str(self.config_path), "--log-level", "info"],
            self.workdir / "containerd.log",
        )
        self.process.wait_until(self._answers, START_TIMEOUT, "serving")
        return self

    def _answers(self) -> bool:
        if not self.address.exists():
            return False
        probe = subprocess.run(
            ["ctr", "--address", str(self.address), "version"], capture_output=True, timeout=10
        )
        return probe.returncode == 0

    def ctr(self, *args: str, namespace: str = "default", check: bool = True) -> str:
        """Runs ``ctr`` against this containerd and returns its standard output."""
        argv = ["ctr", "--address", str(self.address), "--namespace", namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CTR_TIMEOUT)
        if check and done.returncode != 0:
            raise UnavailableError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}{done.stdout}"
            )
        return done.stdout

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> LocalContainerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
