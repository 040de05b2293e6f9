"""A private containerd on loopback, 1.6 or 2.1: its own root, state, sockets and config.

Its configuration is the shipped one for its release (``deploy/containerd/config-1.6.toml`` for
1.6, ``config-2.x.toml`` for 2.1) with only what a private instance must change: paths and
sockets under the work directory, the proxy plugin's address, and plugins that cannot run here
(or would only slow the start) disabled, CRI among them unless asked for. So the file users
install is the file the end-to-end tests and benchmarks run. It keeps the built-in
``overlayfs`` so that benchmarks can compare the two in one run, and starts in about a second.

containerd 1.6 is the system's (Debian 12's package); 2.1 is Debian unstable's package,
unpacked into the checkout by ``make containerd-2.1`` (``devstack/fetch-debian-unstable.sh``),
and runs with its own directory first on ``PATH`` so that it starts its own shim.

With ``cri=True`` the CRI plugin runs too, configured as shipped (lazy2dfs as its snapshotter,
image labels on), so that ``runtime.v1`` calls on containerd's socket pull and run as kubelet
does. Its root and state are ``<root>/io.containerd.grpc.v1.cri`` and
``<state>/io.containerd.grpc.v1.cri``; what it would otherwise keep on the host (CNI and CDI
directories, 2.1's NRI socket and network namespaces) is moved under the work directory; its
streaming server stays on 127.0.0.1 at a free port. The hosts.toml directory CRI and 2.x's
transfer service read (``config_path``) is ``<workdir>/certs.d``, ``hosts_dir`` here; a
registry on 127.0.0.1 needs no file there: containerd reaches loopback hosts over plain HTTP.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from devstack.process import ChildProcess, lazy2dfs_argv
from devstack.service import Service
from lazy2dfs.errors import UnavailableError

START_TIMEOUT = 30.0
CTR_TIMEOUT = 300.0
PULL_TIMEOUT = 300.0

# The repository's copies: devstack runs from a source checkout (make test, make demo).
REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "containerd"
DEBIAN_UNSTABLE = REPO / ".cache" / "debian-unstable"  # where `make containerd-2.1` unpacks
SHIPPED_MIRROR_HOSTS = DEPLOY / "certs.d" / "registry.example.com" / "hosts.toml"
SNAPSHOTTER = "lazy2dfs"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CRI_NAMESPACE = "k8s.io"  # where CRI keeps its images and containers
# CRI serves its gRPC calls once it has logged this (it answers "server is not initialized
# yet" before); a plugin that fails to load is logged and containerd boots without it.
CRI_READY = 'msg="Start streaming server"'
PLUGIN_FAILED = "failed to load plugin"
# Plugins that cannot run here (no btrfs, devmapper pool, scratch file or tracing endpoint):
# off, so that their absence is not mistaken for a failure and costs no start time.
DISABLED_PLUGINS = {
    2: [
        CRI_PLUGIN,
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.tracing.processor.v1.otlp",
    ],
    3: [
        CRI_PLUGIN,
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ],
}
CAP_SYS_RESOURCE = 24  # linux/capability.h
HOSTS_DIR = "certs.d"  # under the work directory: hosts.toml per registry, for CRI and ctr
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_VERSION = re.compile(r" v?(\d+\.\d+\.\d+)\S*(?:\s|$)")


@dataclass(frozen=True)
class Release:
    """A containerd release the stack runs: its binaries and the shipped file it runs."""

    name: str  # "1.6", "2.1"
    shipped_config: Path
    bin_dir: Path | None  # None: the system's, found on PATH
    install: str  # what makes its binaries appear

    def binary(self, name: str) -> str:
        if self.bin_dir is None:
            found = shutil.which(name)
        else:
            path = self.bin_dir / name
            found = str(path) if os.access(path, os.X_OK) else None
        if found is None:
            raise UnavailableError(
                f"{name} of containerd {self.name} is not installed: run '{self.install}'"
            )
        return found

    def environment(self) -> dict[str, str]:
        """containerd finds its shim on PATH: this release's own comes first."""
        env = dict(os.environ)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def version(self) -> str:
        """The version ``containerd --version`` reports, e.g. ``2.1.9``."""
        out = subprocess.run(
            [self.binary("containerd"), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        found = _VERSION.search(out)
        if found is None or not found.group(1).startswith(self.name + "."):
            raise UnavailableError(f"containerd {self.name} expected, found: {out.strip()}")
        return found.group(1)


CONTAINERD_1_6 = Release("1.6", DEPLOY / "config-1.6.toml", None, "make deps")
CONTAINERD_2_1 = Release(
    "2.1",
    DEPLOY / "config-2.x.toml",
    DEBIAN_UNSTABLE / "containerd-2.1" / "usr" / "bin",
    "make containerd-2.1",
)
RELEASES = (CONTAINERD_1_6, CONTAINERD_2_1)


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def load_shipped(release: Release) -> dict[str, Any]:
    try:
        return tomllib.loads(release.shipped_config.read_text())
    except FileNotFoundError:
        raise UnavailableError(
            f"{release.shipped_config} is missing: run from a checkout"
        ) from None


def local_config(
    shipped: Mapping[str, Any],
    workdir: Path,
    address: Path,
    snapshotter_address: Path,
    cri: bool = False,
    snapshotter_root: Path | None = None,
    sandbox_image: str | None = None,
    cri_snapshotter: str | None = None,
) -> dict[str, Any]:
    """``shipped`` (format version 2 for 1.6, 3 for 2.x) with a private instance's paths,
    sockets and disabled plugins; ``cri`` keeps the CRI plugin, with what it keeps on the host
    under ``workdir``; ``snapshotter_root`` is what CRI 2.x reports as the image filesystem;
    ``sandbox_image``: CRI's pause image, as a node without access to registry.k8s.io sets it;
    ``cri_snapshotter``: the snapshotter CRI pulls into instead of lazy2dfs (another lazy
    snapshotter a benchmark compares; format version 2 only, as the benchmarks run 1.6)."""
    config = copy.deepcopy(dict(shipped))
    version = config.get("version")
    if version not in DISABLED_PLUGINS:
        raise UnavailableError(f"containerd config format version {version!r} is not known here")
    if cri_snapshotter is not None and version != 2:
        raise UnavailableError("CRI pulls into another snapshotter only with containerd 1.6")
    proxy = config.get("proxy_plugins", {}).get(SNAPSHOTTER)
    if not isinstance(proxy, dict) or proxy.get("type") != "snapshot":
        raise UnavailableError(f"the shipped config has no snapshot proxy plugin {SNAPSHOTTER!r}")
    proxy["address"] = str(snapshotter_address)
    if snapshotter_root is not None and "root" in proxy.get("exports", {}):
        proxy["exports"]["root"] = str(snapshotter_root)
    root = workdir / "root"
    disabled = [p for p in DISABLED_PLUGINS[version] if not (cri and p == CRI_PLUGIN)]
    config.update(root=str(root), state=str(workdir / "state"), disabled_plugins=disabled)
    config.setdefault("grpc", {})["address"] = str(address)
    config.setdefault("ttrpc", {})["address"] = f"{address}.ttrpc"
    plugins = config.setdefault("plugins", {})
    plugins.setdefault("io.containerd.internal.v1.opt", {})["path"] = str(root / "opt")
    hosts_dir = str(workdir / HOSTS_DIR)
    if version == 2:
        if cri:
            settings = plugins.setdefault(CRI_PLUGIN, {})
            settings.setdefault("cni", {}).update(
                conf_dir=str(workdir / "cni" / "net.d"), bin_dir=str(workdir / "cni" / "bin")
            )
            settings.update(stream_server_address="127.0.0.1", stream_server_port="0")
            settings.setdefault("registry", {})["config_path"] = hosts_dir
            if cri_snapshotter is not None:
                settings.setdefault("containerd", {})["snapshotter"] = cri_snapshotter
            # As for 2.x below: pod sandboxes need CAP_SYS_RESOURCE for their oom_score_adj.
            if not _has_capability(CAP_SYS_RESOURCE):
                settings["restrict_oom_score_adj"] = True
        if sandbox_image is not None:
            plugins.setdefault(CRI_PLUGIN, {})["sandbox_image"] = sandbox_image
        return config
    # 2.x: the same for its CRI runtime plugin, and what else it keeps on the host by default.
    runtime = plugins.setdefault("io.containerd.cri.v1.runtime", {})
    runtime.setdefault("cni", {}).update(
        conf_dir=str(workdir / "cni" / "net.d"), bin_dirs=[str(workdir / "cni" / "bin")]
    )
    runtime.update(cdi_spec_dirs=[str(workdir / "cdi")], netns_mounts_under_state_dir=True)
    # Pod sandboxes ask for oom_score_adj -998, which needs CAP_SYS_RESOURCE; where we run
    # without it (this machine), CRI must keep no lower than containerd's own score.
    if not _has_capability(CAP_SYS_RESOURCE):
        runtime["restrict_oom_score_adj"] = True
    plugins.setdefault("io.containerd.nri.v1.nri", {}).update(
        socket_path=str(workdir / "nri" / "nri.sock"),
        plugin_path=str(workdir / "nri" / "plugins"),
        plugin_config_path=str(workdir / "nri" / "conf.d"),
    )
    plugins.setdefault("io.containerd.image-verifier.v1.bindir", {})["bin_dir"] = str(
        root / "image-verifier"
    )
    plugins.setdefault(CRI_PLUGIN, {}).update(
        stream_server_address="127.0.0.1", stream_server_port="0"
    )
    images = plugins.setdefault("io.containerd.cri.v1.images", {})
    if cri:
        images.setdefault("registry", {})["config_path"] = hosts_dir
        plugins.setdefault("io.containerd.transfer.v1.local", {})["config_path"] = hosts_dir
    if sandbox_image is not None:
        images.setdefault("pinned_images", {})["sandbox"] = sandbox_image
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


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_toml(table: Mapping[str, Any], path: tuple[str, ...] = ()) -> str:
    """TOML for what containerd's config uses: tables of strings, integers, booleans, lists,
    and arrays of flat tables (2.x's ``unpack_config``)."""
    lines = [
        f"{_key(k)} = {_value(v)}"
        for k, v in table.items()
        if not isinstance(v, dict) and not _is_table_array(v)
    ]
    text = "\n".join(lines) + "\n" if lines else ""
    for name, sub in table.items():
        header = ".".join(_key(p) for p in (*path, name))
        if _is_table_array(sub):
            for entry in sub:
                text += f"\n[[{header}]]\n" + "".join(
                    f"{_key(k)} = {_value(v)}\n" for k, v in entry.items()
                )
        elif isinstance(sub, dict):
            body = dump_toml(sub, (*path, name))
            if not sub or not all(isinstance(v, dict) for v in sub.values()):
                # A table holding only tables needs no header of its own.
                body = f"\n[{header}]\n" + body
            text += body
    return text


def write_mirror_hosts(hosts_dir: Path, registry: str, mirror: str) -> None:
    """Installs the shipped hosts.toml for ``registry`` (``host:port``, plain HTTP as every
    devstack registry) under ``hosts_dir``, naming lazy2dfs's partition mirror at ``mirror``
    (``host:port``), as a user installs it."""
    text = SHIPPED_MIRROR_HOSTS.read_text()
    text = text.replace("https://registry.example.com", f"http://{registry}")
    text = text.replace("http://127.0.0.1:5050", f"http://{mirror}")
    directory = hosts_dir / registry
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)


class LocalContainerd(Service):
    """containerd ``release`` with everything under ``workdir``; ``ctr`` (the release's own)
    runs against it. ``snapshotter_root`` and ``sandbox_image``: see ``local_config``;
    ``config``, if given, is run instead (tests that compare configurations).

    It starts only if every plugin it loads loads: a shipped config that breaks one (as
    ``linux/arm64`` unpack entries broke 2.1's transfer service and CRI on amd64) fails here,
    with containerd's own line. ``snapshotter_config`` is the daemon's configuration file,
    which ``lazy2dfs pull`` reads for its registry settings.

    ``other_snapshotters`` are more proxy snapshotters, by name and socket (upstream's stargz
    and SOCI snapshotters, for benchmarks that compare), ``cri_snapshotter`` the one of them
    CRI pulls into (see ``local_config``)."""

    def __init__(
        self,
        workdir: Path,
        snapshotter_address: Path,
        cri: bool = False,
        release: Release = CONTAINERD_1_6,
        snapshotter_root: Path | None = None,
        sandbox_image: str | None = None,
        config: Mapping[str, Any] | None = None,
        snapshotter_config: Path | None = None,
        other_snapshotters: Mapping[str, Path] | None = None,
        cri_snapshotter: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.address = workdir / "containerd.sock"
        self.config_path = workdir / "config.toml"
        self.hosts_dir = workdir / HOSTS_DIR
        self.snapshotter_address = snapshotter_address
        self.snapshotter_root = snapshotter_root
        self.sandbox_image = sandbox_image
        self.config = config
        self.snapshotter_config = snapshotter_config
        self.cri = cri
        self.release = release
        self.other_snapshotters = dict(other_snapshotters or {})
        self.cri_snapshotter = cri_snapshotter
        self.log_path = workdir / "containerd.log"
        self._log_start = 0
        self.process: ChildProcess | None = None

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    def start(self) -> Self:
        binary = self.release.binary("containerd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_dir.mkdir(exist_ok=True)
        config = self.config or local_config(
            load_shipped(self.release),
            self.workdir,
            self.address,
            self.snapshotter_address,
            cri=self.cri,
            snapshotter_root=self.snapshotter_root,
            sandbox_image=self.sandbox_image,
            cri_snapshotter=self.cri_snapshotter,
        )
        if self.other_snapshotters:
            proxies = dict(config.get("proxy_plugins", {}))
            for name, address in self.other_snapshotters.items():
                proxies[name] = {"type": "snapshot", "address": str(address)}
            config = {**config, "proxy_plugins": proxies}
        self.config_path.write_text(dump_toml(config))
        self.address.unlink(missing_ok=True)
        # The log is appended to across restarts: readiness looks only at this start's lines.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = ChildProcess(
            f"containerd {self.release.name}",
            [binary, "--config", str(self.config_path), "--log-level", "info"],
            self.log_path,
            env=self.release.environment(),
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
        log = self.log()
        failed = [line for line in log.splitlines() if PLUGIN_FAILED in line]
        if failed:
            raise UnavailableError(
                f"containerd {self.release.name} failed to load a plugin with"
                f" {self.release.shipped_config.name}: {failed[0]}"
            )
        if self.cri and CRI_READY not in log:
            return False
        probe = subprocess.run(
            [self.release.binary("ctr"), "--address", str(self.address), "version"],
            capture_output=True,
            timeout=10,
        )
        return probe.returncode == 0

    def ctr(self, *args: str, namespace: str = "default", check: bool = True) -> str:
        """Runs ``ctr`` against this containerd and returns its standard output."""
        argv = [self.release.binary("ctr"), "--address", str(self.address)]
        argv += ["--namespace", namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CTR_TIMEOUT)
        if check and done.returncode != 0:
            raise UnavailableError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}{done.stdout}"
            )
        return done.stdout

    def pull_argv(self, ref: str, *flags: str) -> list[str]:
        """``lazy2dfs pull`` of ``ref`` into this containerd, with the private daemon's
        configuration (run it with ``pull_env``, which names the daemon's socket)."""
        config = ["--config", str(self.snapshotter_config)] if self.snapshotter_config else []
        return [*lazy2dfs_argv(), "pull", "-a", str(self.address), *config, *flags, ref]

    def pull_env(self) -> dict[str, str]:
        """The environment for ``pull_argv``: the private daemon is not at the default
        address, and no configuration file of its names it."""
        return {**os.environ, "LAZY2DFS_ADDRESS": str(self.snapshotter_address)}

    def route_through_mirror(self, registry: str, mirror: str) -> None:
        """The shipped hosts.toml for ``registry``, naming the partition mirror ``mirror``."""
        write_mirror_hosts(self.hosts_dir, registry, mirror)

    def lazy_pull(self, ref: str, hosts_dir: Path | None = None) -> str:
        """``lazy2dfs pull`` into this containerd (through the mirrors ``hosts_dir``
        configures); returns what it reported (on standard error: the layers pulled lazily,
        present and downloaded)."""
        flags = ["--hosts-dir", str(hosts_dir)] if hosts_dir is not None else []
        done = subprocess.run(
            self.pull_argv(ref, *flags),
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT,
            env=self.pull_env(),
        )
        if done.returncode != 0:
            raise UnavailableError(f"lazy2dfs pull {ref} failed:\n{done.stderr}")
        return done.stderr

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
