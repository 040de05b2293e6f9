"""`lazy2dfs pull` against a registry on the network, as a new user meets it: a pull the daemon
could not serve lazily is refused with the setting to change, before anything is stored; an
HTTPS pull of a plain HTTP registry says so; a daemon that is down is named as such.

The registry runs in a private network namespace on an address that is not loopback, as a
registry on the network would (lazy2dfs reaches loopback registries over HTTP untold); the
daemon and the pull run there too. containerd needs no network: it only talks to both.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio

from devstack.auth import HtpasswdAuth
from devstack.containerd import LocalContainerd
from devstack.images import BuiltImage, build_image, build_layer, push_image
from devstack.model import runtime_tree
from devstack.network import PrivateNetwork
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.registry_client import Credentials, CredentialStore, RegistryClient
from tests.support.stack import Stack, private_stack

ESTARGZ = WriterOptions(chunk_size=64 * 1024, mtime=946684800)
TIMEOUT = 300


def _image(name: str) -> BuiltImage:
    return build_image(
        [
            build_layer(runtime_tree(), estargz=ESTARGZ),
            build_layer({f"{name}/weights.bin": os.urandom(300_000)}, estargz=ESTARGZ),
        ]
    )


@pytest.fixture(scope="module")
def network() -> Iterator[PrivateNetwork]:
    with PrivateNetwork() as private:
        yield private


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, network: PrivateNetwork) -> Iterator[Stack]:
    """A registry on the network, and a daemon with its default registry settings."""
    with private_stack(tmp_path_factory.mktemp("net"), network=network) as stack:
        yield stack


def pull(
    stack: Stack, network: PrivateNetwork, ref: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    """``lazy2dfs pull`` as the user types it, on a node that reaches the registry."""
    return subprocess.run(
        network.argv(*stack.containerd.pull_argv(ref, *flags)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=stack.containerd.pull_env(),
    )


def images(stack: Stack) -> list[str]:
    return stack.ctr("images", "ls", "--quiet").split()


def test_plain_http_pull_is_refused_until_the_daemon_is_told_then_lazy(
    remote: Stack, network: PrivateNetwork
) -> None:
    host = remote.registry.host
    image = _image("first")
    ref = remote.push("first/model:v1", image)
    asked_before = len(remote.registry.requests())

    refused = pull(remote, network, ref, "--plain-http")
    assert refused.returncode == 1
    message = refused.stderr
    assert "refusing to pull" in message and "plain HTTP" in message
    assert f'add "{host}" to registry.plain_http in {remote.snapshotter.config_path}' in message
    assert f"/etc/containerd/certs.d/{host}/hosts.toml" in message
    assert f'server = "http://{host}"' in message and "restart the daemon" in message
    # Nothing pulled, nothing asked of the registry, no layer downloaded.
    assert ref not in images(remote)
    assert len(remote.registry.requests()) == asked_before
    stored = remote.ctr("content", "ls", "--quiet").split()
    assert image.root.digest not in stored
    assert not {layer.blob.digest for layer in image.layers} & set(stored)

    # The fix the message names.
    remote.snapshotter.config = f'[registry]\nplain_http = ["{host}"]\n'
    remote.restart_snapshotter(crash=False)
    done = pull(remote, network, ref, "--plain-http")
    assert done.returncode == 0, done.stderr
    assert "2 lazy, 0 present, 0 downloaded" in done.stderr
    assert remote.run(ref, "first", "wc -c < /first/weights.bin").strip() == "300000"
    # The pull reads the daemon's configuration: no flag needed for a host it lists.
    second = remote.push("first/model:v2", _image("second"))
    done = pull(remote, network, second)
    assert done.returncode == 0, done.stderr
    assert "1 lazy, 1 present, 0 downloaded" in done.stderr


def test_an_https_pull_of_a_plain_http_registry_says_so_and_what_to_do(
    remote: Stack, network: PrivateNetwork
) -> None:
    ref = remote.push("https/model:v1", _image("https"))
    remote.snapshotter.config = ""
    remote.restart_snapshotter(crash=False)
    done = pull(remote, network, ref)
    assert done.returncode == 1
    message = done.stderr.strip()
    host = remote.registry.host
    assert f"{host} answered in plain HTTP to an HTTPS request" in message, message
    assert "--plain-http" in message and "registry.plain_http" in message
    assert "gave up" not in message  # not retried: retrying cannot help
    assert "Error: " not in message and "Error:\n" not in message + "\n"


def test_a_pull_with_the_daemon_down_names_the_daemon_not_containerd(
    remote: Stack, network: PrivateNetwork, tmp_path: Path
) -> None:
    ref = remote.push("down/model:v1", _image("down"))
    remote.snapshotter.stop_daemon()
    try:
        done = pull(remote, network, ref)
        assert done.returncode == 1
        control = remote.snapshotter.address.with_suffix(".control.sock")
        assert "lazy2dfs daemon is not running" in done.stderr and str(control) in done.stderr
        assert "lazy2dfs serve" in done.stderr
        assert "containerd" not in done.stderr.replace("containerd/certs.d", "")
        # A daemon serving another socket than containerd dials: containerd is named as
        # answering, the socket it cannot reach as the problem.
        plain = f'[registry]\nplain_http = ["{remote.registry.host}"]\n'
        with LocalSnapshotter(tmp_path / "elsewhere", plain, network=network) as elsewhere:
            env = {**remote.containerd.pull_env(), "LAZY2DFS_ADDRESS": str(elsewhere.address)}
            done = subprocess.run(
                network.argv(*remote.containerd.pull_argv(ref, "--plain-http")),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                env=env,
            )
        assert done.returncode == 1
        assert "containerd answers, but cannot reach the snapshotter's socket" in done.stderr
        assert str(remote.snapshotter.address) in done.stderr
        assert "proxy_plugins" in done.stderr, done.stderr
    finally:
        remote.restart_snapshotter(crash=False)
    assert ref not in images(remote)


def test_a_registry_that_refuses_the_daemon_is_refused_until_it_has_credentials(
    tmp_path: Path,
) -> None:
    """The pull's user has logged in, the daemon's has not: every layer would be downloaded
    (by the pull's credentials). Refused, naming the daemon's credentials file."""
    auth = HtpasswdAuth("model-reader", "s3cret-for-this-test")
    login = tmp_path / "user-docker"
    login.mkdir()
    token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
    daemon_docker = tmp_path / "daemon-docker"
    daemon_docker.mkdir()
    with ExitStack() as running:
        registry = running.enter_context(LocalRegistry(tmp_path / "r", auth=auth))
        (login / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
        snapshotter = running.enter_context(
            LocalSnapshotter(
                tmp_path / "s", env={**os.environ, "DOCKER_CONFIG": str(daemon_docker)}
            )
        )
        containerd = running.enter_context(
            LocalContainerd(
                tmp_path / "c", snapshotter.address, snapshotter_config=snapshotter.config_path
            )
        )
        ref = f"{registry.host}/private/model:v1"
        store = CredentialStore(explicit={registry.host: Credentials(auth.username, auth.password)})

        async def upload() -> None:
            async with RegistryClient(credentials=store) as client:
                await push_image(client, ref, _image("private"))

        trio.run(upload)
        env = {**containerd.pull_env(), "DOCKER_CONFIG": str(login)}

        def lazy_pull() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                containerd.pull_argv(ref), capture_output=True, text=True, timeout=TIMEOUT, env=env
            )

        refused = lazy_pull()
        assert refused.returncode == 1
        assert "the lazy2dfs daemon cannot fetch" in refused.stderr
        assert f"no credentials for {registry.host}" in refused.stderr
        assert str(daemon_docker / "config.json") in refused.stderr
        assert ref not in containerd.ctr("images", "ls", "--quiet").split()

        (daemon_docker / "config.json").write_text((login / "config.json").read_text())
        Stack(registry, snapshotter, containerd).restart_snapshotter(crash=False)
        done = lazy_pull()
        assert done.returncode == 0, done.stderr
        assert "2 lazy, 0 present, 0 downloaded" in done.stderr
