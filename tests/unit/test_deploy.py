"""The files under deploy/ are what they claim: containerd loads its configs, systemd accepts
the unit, the Kubernetes manifests carry what the node needs, and their command lines are ones
``lazy2dfs`` accepts."""

import configparser
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from devstack.containerd import SHIPPED_CONFIG, dump_toml, local_config
from lazy2dfs import config
from lazy2dfs.cli import build_parser
from lazy2dfs.daemon import SHUTDOWN_GRACE_SECONDS
from lazy2dfs.registry_client import parse_reference

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SOCKET = str(config.Config().address)
CRI_V1 = "io.containerd.grpc.v1.cri"


def _containerd() -> str:
    binary = shutil.which("containerd")
    if binary is None:
        pytest.fail("containerd is not installed: run 'make deps'")
    return binary


def _dump(path: Path) -> dict[str, Any]:
    """The configuration containerd 1.6 would run with, as it prints it."""
    done = subprocess.run(
        [_containerd(), "--config", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def _version_2_files() -> list[Path]:
    files = sorted((DEPLOY / "containerd").glob("*.toml"))
    return [f for f in files if tomllib.loads(f.read_text()).get("version") == 2]


def test_the_tests_use_a_shipped_version_2_file() -> None:
    assert SHIPPED_CONFIG in _version_2_files()


@pytest.mark.parametrize("path", _version_2_files(), ids=lambda p: p.name)
def test_containerd_loads_the_shipped_version_2_config(path: Path) -> None:
    dumped = _dump(path)
    assert dumped["proxy_plugins"]["lazy2dfs"] == {"type": "snapshot", "address": SOCKET}
    cri = dumped["plugins"][CRI_V1]["containerd"]
    assert cri["snapshotter"] == "lazy2dfs"
    assert cri["disable_snapshot_annotations"] is False


def test_private_containerd_config_is_the_shipped_one_with_local_paths(tmp_path: Path) -> None:
    shipped = tomllib.loads(SHIPPED_CONFIG.read_text())
    local = local_config(shipped, tmp_path, tmp_path / "c.sock", tmp_path / "s.sock")
    assert tomllib.loads(dump_toml(local)) == local
    # Only the private instance's paths, sockets and disabled plugins differ.
    assert local["plugins"][CRI_V1] == shipped["plugins"][CRI_V1]
    assert local["proxy_plugins"]["lazy2dfs"] == {
        **shipped["proxy_plugins"]["lazy2dfs"],
        "address": str(tmp_path / "s.sock"),
    }
    assert CRI_V1 in local["disabled_plugins"]
    file = tmp_path / "config.toml"
    file.write_text(dump_toml(local))
    dumped = _dump(file)
    assert dumped["grpc"]["address"] == str(tmp_path / "c.sock")
    assert dumped["proxy_plugins"]["lazy2dfs"]["address"] == str(tmp_path / "s.sock")


def test_containerd_2_config_enables_the_transfer_service_and_cri() -> None:
    # containerd 2.x is not installed here: check the structure its documentation describes.
    cfg = tomllib.loads((DEPLOY / "containerd" / "config-2.x.toml").read_text())
    assert cfg["version"] == 3
    proxy = cfg["proxy_plugins"]["lazy2dfs"]
    assert proxy["type"] == "snapshot"
    assert proxy["address"] == SOCKET
    assert proxy["exports"] == {
        "root": str(config.Config().root),
        "enable_remote_snapshot_annotations": "true",
    }
    unpack = cfg["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]
    lazy = {u["platform"] for u in unpack if u["snapshotter"] == "lazy2dfs"}
    assert lazy == {"linux/amd64", "linux/arm64"}
    images = cfg["plugins"]["io.containerd.cri.v1.images"]
    assert images["snapshotter"] == "lazy2dfs"
    # On 2.1 this setting turns CRI's transfer service off; the file must not need it.
    assert "disable_snapshot_annotations" not in images


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / "lazy2dfs.service")
    return parser


def test_systemd_unit_settings() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "always"
    assert service["KillMode"] in {"process", "mixed"}
    assert int(service["LimitNOFILE"]) >= 65536
    assert "containerd.service" in unit["Unit"]["Before"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # Longer than the daemon's own drain, so systemd does not kill it mid-drain.
    assert int(service["TimeoutStopSec"]) > SHUTDOWN_GRACE_SECONDS
    binary, *args = shlex.split(service["ExecStart"])
    assert Path(binary).name == "lazy2dfs"
    assert build_parser().parse_args(args).command == "serve"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # No systemd here: the settings test above is the check.
        assert _unit().has_section("Service")
        return
    # verify insists that ExecStart's binary exists: point it at this checkout's lazy2dfs.
    installed = Path(sys.executable).parent / "lazy2dfs"
    assert installed.exists(), "lazy2dfs is not installed in this environment"
    text = (DEPLOY / "systemd" / "lazy2dfs.service").read_text()
    unit = tmp_path / "lazy2dfs.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/lazy2dfs ", f"ExecStart={installed} "))
    assert str(installed) in unit.read_text()
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "lazy2dfs.service" not in done.stderr, done.stderr


def _manifest(name: str) -> dict[str, Any]:
    """A manifest written as YAML in JSON style with whole-line comments."""
    text = (DEPLOY / "kubernetes" / name).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    manifest: dict[str, Any] = json.loads("\n".join(lines))
    return manifest


def test_daemonset_carries_what_the_node_needs() -> None:
    ds = _manifest("daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    template = ds["spec"]["template"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert "hostPID" not in pod
    [container] = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} == set(volumes)
    defaults = config.Config()
    for path in (str(defaults.root), str(defaults.address.parent), "/dev/fuse"):
        # Same path inside and outside: containerd uses the paths the daemon names.
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert mounts[str(defaults.root)]["mountPropagation"] == "Bidirectional"
    assert volumes[mounts["/dev/fuse"]["name"]]["hostPath"]["type"] == "CharDevice"

    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == "lazy2dfs"
    metrics = config.load(
        Path("/dev/null"), env={}, overrides={"metrics_address": args.metrics_address}
    )
    assert metrics.metrics_host_port is not None
    host, port = metrics.metrics_host_port
    assert host == "0.0.0.0"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    [named] = [p for p in container["ports"] if p["containerPort"] == port]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": named["name"]}
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS


def test_model_deployment_uses_a_2dfs_partition() -> None:
    deployment = _manifest("model-deployment.yaml")
    assert deployment["kind"] == "Deployment"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ref = parse_reference(container["image"])
    assert ref.registry == "registry.example.com"
    assert ref.tag == "v1"
    assert [str(p) for p in ref.partitions] == ["0.0.1.0"]
    node = deployment["spec"]["template"]["spec"]["nodeSelector"]
    assert (
        node.items()
        <= _manifest("daemonset.yaml")["spec"]["template"]["spec"]["nodeSelector"].items()
    )
