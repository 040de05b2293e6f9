"""The files under deploy/ are what they claim: containerd (1.6 and 2.1) loads its configs,
systemd accepts
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

from devstack.containerd import (
    CONTAINERD_1_6,
    CONTAINERD_2_1,
    RELEASES,
    SHIPPED_MIRROR_HOSTS,
    Release,
    dump_toml,
    load_shipped,
    local_config,
)
from lazy2dfs import config
from lazy2dfs.cli import build_parser
from lazy2dfs.cli.status import HEALTH_TIMEOUT
from lazy2dfs.daemon import SHUTDOWN_GRACE_SECONDS
from lazy2dfs.registry_client import Capability, parse_reference
from lazy2dfs.registry_client.hosts import parse_hosts_toml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SOCKET = str(config.Config().address)
CRI_V1 = "io.containerd.grpc.v1.cri"


def _dump(path: Path, release: Release = CONTAINERD_1_6) -> dict[str, Any]:
    """The configuration ``release`` would run with, as it prints it."""
    done = subprocess.run(
        [release.binary("containerd"), "--config", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def _version_2_files() -> list[Path]:
    files = sorted((DEPLOY / "containerd").glob("*.toml"))
    return [f for f in files if tomllib.loads(f.read_text()).get("version") == 2]


def test_the_tests_use_the_shipped_files() -> None:
    assert CONTAINERD_1_6.shipped_config in _version_2_files()
    assert CONTAINERD_2_1.shipped_config == DEPLOY / "containerd" / "config-2.x.toml"


@pytest.mark.parametrize("path", _version_2_files(), ids=lambda p: p.name)
def test_containerd_loads_the_shipped_version_2_config(path: Path) -> None:
    dumped = _dump(path)
    assert dumped["proxy_plugins"]["lazy2dfs"] == {"type": "snapshot", "address": SOCKET}
    cri = dumped["plugins"][CRI_V1]["containerd"]
    assert cri["snapshotter"] == "lazy2dfs"
    assert cri["disable_snapshot_annotations"] is False
    # hosts.toml files, the partition mirror's among them, are where the daemon reads them.
    hosts_dir = str(config.Config().registry.hosts_dir)
    assert dumped["plugins"][CRI_V1]["registry"]["config_path"] == hosts_dir


def test_the_shipped_hosts_toml_puts_the_partition_mirror_before_the_registry() -> None:
    assert SHIPPED_MIRROR_HOSTS.parent.parent == DEPLOY / "containerd" / "certs.d"
    mirror, server = parse_hosts_toml(SHIPPED_MIRROR_HOSTS.read_text(), SHIPPED_MIRROR_HOSTS.parent)
    assert server.base_url == f"https://{SHIPPED_MIRROR_HOSTS.parent.name}/v2"
    assert mirror.scheme == "http"
    assert mirror.capabilities == Capability.PULL | Capability.RESOLVE
    # The address the daemon accepts without opting out of loopback, as the file's text says.
    args = build_parser().parse_args(["serve", "--mirror-address", mirror.host])
    loaded = config.load(
        Path("/dev/null"), env={}, overrides={"mirror_address": args.mirror_address}
    )
    assert loaded.mirror_host_port == ("127.0.0.1", 5050)
    assert f'mirror_address = "{mirror.host}"' in SHIPPED_MIRROR_HOSTS.read_text()


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: f"containerd-{r.name}")
def test_private_containerd_config_is_the_shipped_one_with_local_paths(
    release: Release, tmp_path: Path
) -> None:
    shipped = load_shipped(release)
    local = local_config(shipped, tmp_path, tmp_path / "c.sock", tmp_path / "s.sock")
    assert tomllib.loads(dump_toml(local)) == local
    # Only the private instance's paths, sockets and disabled plugins differ: every setting
    # the shipped file makes is there unchanged, the proxy's address aside.
    for name, settings in shipped["plugins"].items():
        assert local["plugins"][name].items() >= settings.items(), name
    assert local["proxy_plugins"]["lazy2dfs"] == {
        **shipped["proxy_plugins"]["lazy2dfs"],
        "address": str(tmp_path / "s.sock"),
    }
    assert CRI_V1 in local["disabled_plugins"]
    file = tmp_path / "config.toml"
    file.write_text(dump_toml(local))
    dumped = _dump(file, release)
    assert dumped["grpc"]["address"] == str(tmp_path / "c.sock")
    assert dumped["proxy_plugins"]["lazy2dfs"]["address"] == str(tmp_path / "s.sock")
    # Nothing containerd writes or listens on stays outside the work directory.
    for path in (dumped["root"], dumped["state"], dumped["ttrpc"]["address"]):
        assert path.startswith(str(tmp_path)), path
    if release is CONTAINERD_2_1:
        nri = dumped["plugins"]["io.containerd.nri.v1.nri"]
        assert nri["socket_path"].startswith(str(tmp_path))
        runtime = dumped["plugins"]["io.containerd.cri.v1.runtime"]
        assert runtime["netns_mounts_under_state_dir"] is True
        assert all(d.startswith(str(tmp_path)) for d in runtime["cdi_spec_dirs"])


def test_containerd_2_1_loads_the_transfer_service_and_cri_settings() -> None:
    dumped = _dump(CONTAINERD_2_1.shipped_config, CONTAINERD_2_1)
    proxy = dumped["proxy_plugins"]["lazy2dfs"]
    assert proxy["type"] == "snapshot"
    assert proxy["address"] == SOCKET
    assert proxy["exports"] == {
        "address": SOCKET,  # containerd adds it
        "root": str(config.Config().root),
        "enable_remote_snapshot_annotations": "true",
    }
    unpack = dumped["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]
    # Each entry names its differ (else a foreign platform's entry breaks the transfer
    # service: tests/e2e/test_containerd_plugins.py); overlayfs stays, for other pulls.
    assert all(u["differ"] == "walking" for u in unpack)
    for snapshotter in ("lazy2dfs", "overlayfs"):
        platforms = {u["platform"] for u in unpack if u["snapshotter"] == snapshotter}
        assert platforms == {"linux/amd64", "linux/arm64"}
    assert dumped["plugins"]["io.containerd.transfer.v1.local"]["check_platform_supported"] is False
    images = dumped["plugins"]["io.containerd.cri.v1.images"]
    assert images["snapshotter"] == "lazy2dfs"
    # hosts.toml files, the partition mirror's among them, are where the daemon reads them.
    hosts_dir = str(config.Config().registry.hosts_dir)
    assert dumped["plugins"]["io.containerd.transfer.v1.local"]["config_path"] == hosts_dir
    assert images["registry"]["config_path"] == hosts_dir
    # The defaults, which keep CRI pulling through the transfer service: the file must not
    # set disable_snapshot_annotations (false would switch 2.1 to its local puller).
    assert images["use_local_image_pull"] is False
    assert (
        "disable_snapshot_annotations"
        not in load_shipped(CONTAINERD_2_1)["plugins"]["io.containerd.cri.v1.images"]
    )


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
    assert "hostPID" not in pod and "hostNetwork" not in pod
    keeper, container = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    defaults = config.Config()
    for each in (keeper, container):
        assert each["securityContext"]["privileged"] is True
        mounts = {m["mountPath"]: m for m in each["volumeMounts"]}
        assert {m["name"] for m in mounts.values()} <= set(volumes)
        # Same path inside and outside: containerd uses the paths the daemon names.
        assert volumes[mounts[str(defaults.root)]["name"]]["hostPath"]["path"] == str(defaults.root)
        assert mounts[str(defaults.root)]["mountPropagation"] == "Bidirectional"
        assert volumes[mounts["/dev/fuse"]["name"]]["hostPath"]["type"] == "CharDevice"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} == set(volumes)
    run = str(defaults.address.parent)
    assert volumes[mounts[run]["name"]]["hostPath"]["path"] == run

    # The keeper is a container of its own, which a restart of the daemon's leaves running.
    assert build_parser().parse_args(keeper["command"][1:]).command == "keeper"
    env = {e["name"]: e["value"] for e in container["env"]}
    daemon = config.load(Path("/dev/null"), env=env)
    assert daemon.fuse.keeper == "external"

    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == keeper["command"][0] == "lazy2dfs"
    metrics = config.load(
        Path("/dev/null"), env={}, overrides={"metrics_address": args.metrics_address}
    )
    assert metrics.metrics_host_port == ("127.0.0.1", 9879)
    assert "annotations" not in template["metadata"]  # nothing to scrape from outside the pod
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        probe_args = build_parser().parse_args(command[1:])
        assert command[0] == "lazy2dfs" and probe_args.command == "status" and probe_args.health
        assert container[probe]["timeoutSeconds"] > HEALTH_TIMEOUT
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


def test_model_server_mounts_its_weights_as_an_image_volume() -> None:
    deployment = _manifest("model-image-volume.yaml")
    assert deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [container] = pod["containers"]
    [mount] = container["volumeMounts"]
    volume = volumes[mount["name"]]
    assert mount["readOnly"] is True
    assert volume["image"]["pullPolicy"] in {"IfNotPresent", "Always", "Never"}
    assert parse_reference(volume["image"]["reference"]).tag == "v1"
    assert mount["mountPath"] in " ".join(container["args"])
    assert "subPath" not in mount  # containerd 2.1 ignores it (docs/kubernetes.md)
    node = pod["nodeSelector"]
    assert (
        node.items()
        <= _manifest("daemonset.yaml")["spec"]["template"]["spec"]["nodeSelector"].items()
    )
