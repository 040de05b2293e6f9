"""A private containerd 1.6+ on loopback: its own root, state, sockets and config.

Its configuration is the shipped ``deploy/containerd/config-1.6.toml`` with only what a private
instance must change: paths and sockets under the work directory, the proxy plugin's address,
and plugins that cannot run here (or would only slow the start) disabled, CRI among them unless
asked for. So the file users install is the file the end-to-end tests and benchmarks run. It
keeps the built-in ``overlayfs`` so that benchmarks can compare the two in one run, and starts
in well under a second.

With ``cri=True`` the CRI plugin runs too, configured as shipped (lazy2dfs as its snapshotter,
snapshot annotations on), so that ``runtime.v1.ImageService/PullImage`` on containerd's socket
pulls as kubelet does. Its root and state are ``<root>/io.containerd.grpc.v1.cri`` and
``<state>/io.containerd.grpc.v1.cri``; its CNI directories (which it creates and watches at
start, although an image pull never uses CNI) are moved under the work directory; its
streaming server stays on 127.0.0.1 at a free port. A registry on 127.0.0.1 needs no setting:
with no ``registry.config_path``, CRI 1.6 reaches loopback hosts over plain HTTP.
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

from devstack.process import ChildProcess, lazy2dfs_argv
from lazy2dfs.errors import UnavailableError

START_TIMEOUT = 30.0
CTR_TIMEOUT = 300.0
PULL_TIMEOUT = 300.0

# The repository's copy: devstack runs from a source checkout (make test, make demo).
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "containerd" / "config-1.6.toml"
SNAPSHOTTER = "lazy2dfs"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CRI_NAMESPACE = "k8s.io"  # where CRI keeps its images and containers
# CRI serves its gRPC calls once it has logged this (it answers "server is not initialized
# yet" before); if it fails to load, containerd logs the error and boots without it.
CRI_READY = 'msg="Start streaming server"'
CRI_FAILED = "failed to load plugin " + CRI_PLUGIN
DISABLED_PLUGINS = [
    CRI_PLUGIN,
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def local_config(
    shipped: Mapping[str, Any],
    workdir: Path,
    address: Path,
    snapshotter_address: Path,
    cri: bool = False,
) -> dict[str, Any]:
    """``shipped`` with a private instance's paths, sockets and disabled plugins; ``cri`` keeps
    the CRI plugin, with its CNI directories under ``workdir``."""
    config = copy.deepcopy(dict(shipped))
    proxy = config.get("proxy_plugins", {}).get(SNAPSHOTTER)
    if not isinstance(proxy, dict) or proxy.get("type") != "snapshot":
        raise UnavailableError(f"{SHIPPED_CONFIG} has no snapshot proxy plugin {SNAPSHOTTER!r}")
    proxy["address"] = str(snapshotter_address)
    root = workdir / "root"
    disabled = [p for p in DISABLED_PLUGINS if not (cri and p == CRI_PLUGIN)]
    config.update(root=str(root), state=str(workdir / "state"), disabled_plugins=disabled)
    config.setdefault("grpc", {})["address"] = str(address)
    config.setdefault("ttrpc", {})["address"] = f"{address}.ttrpc"
    plugins = config.setdefault("plugins", {})
    plugins.setdefault("io.containerd.internal.v1.opt", {})["path"] = str(root / "opt")
    if cri:
        settings = plugins.setdefault(CRI_PLUGIN, {})
        settings.setdefault("cni", {}).update(
            conf_dir=str(workdir / "cni" / "net.d"), bin_dir=str(workdir / "cni" / "bin")
        )
        settings.update(stream_server_address="127.0.0.1", stream_server_port="0")
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
    """containerd with everything under ``workdir``; ``ctr`` runs against it.
    ``other_snapshotters`` are more proxy snapshotters, by name and socket (the upstream
    stargz snapshotter, for benchmarks that compare)."""

    def __init__(
        self,
        workdir: Path,
        snapshotter_address: Path,
        cri: bool = False,
        other_snapshotters: Mapping[str, Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.address = workdir / "containerd.sock"
        self.config_path = workdir / "config.toml"
        self.snapshotter_address = snapshotter_address
        self.cri = cri
        self.other_snapshotters = dict(other_snapshotters or {})
        self.log_path = workdir / "containerd.log"
        self._log_start = 0
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
        config = local_config(
            shipped, self.workdir, self.address, self.snapshotter_address, cri=self.cri
        )
        for name, address in self.other_snapshotters.items():
            config["proxy_plugins"][name] = {"type": "snapshot", "address": str(address)}
        self.config_path.write_text(dump_toml(config))
        self.address.unlink(missing_ok=True)
        # The log is appended to across restarts: readiness looks only at this start's lines.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = ChildProcess(
            "containerd",
            [binary, "--config", str(self.config_path), "--log-level", "info"],
            self.log_path,
        )
        try:
            self.process.wait_until(self._answers, START_TIMEOUT, "serving")
        except BaseException:
            self.stop()  # a failed start leaves no containerd behind (``__exit__`` never runs)
            raise
        return self

    def log(self) -> str:
        """What containerd has logged since it was last started."""
        with self.log_path.open("rb") as file:
            file.seek(self._log_start)
            return file.read().decode(errors="replace")

    def _answers(self) -> bool:
        if not self.address.exists():
            return False
        if self.cri:
            log = self.log()
            failed = [line for line in log.splitlines() if CRI_FAILED in line]
            if failed:
                raise UnavailableError(f"containerd could not load CRI: {failed[0]}")
            if CRI_READY not in log:
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

    def lazy_pull(self, ref: str) -> str:
        """``lazy2dfs pull`` into this containerd; returns what it reported (on standard
        error: the layers pulled lazily, present and downloaded)."""
        argv = [*lazy2dfs_argv(), "pull", "--containerd-address", str(self.address), ref]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PULL_TIMEOUT)
        if done.returncode != 0:
            raise UnavailableError(f"lazy2dfs pull {ref} failed:\n{done.stderr}")
        return done.stderr

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
