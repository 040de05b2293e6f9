"""The daemon's ``/pull`` (what ``lazy2dfs pull`` asks of it), without containerd: a request
that is not one is refused and changes nothing; a pull that fails says why, frees its place,
and leaves the daemon serving. The pulls that succeed are the e2e tests' (``test_lazy_pull``,
``test_pull_refusals``, ``test_containerd_pull_run``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.images import build_image, build_layer
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.containerd.pull_service import MAX_PULLS
from lazy2dfs.estargz import WriterOptions


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSnapshotter, str]]:
    """A daemon, and an image it could pull lazily from a registry on loopback."""
    work = tmp_path_factory.mktemp("pulls")
    image = build_image(
        [build_layer({"model/w.bin": os.urandom(100_000)}, estargz=WriterOptions())]
    )
    with LocalRegistry(work / "r") as registry, LocalSnapshotter(work / "s") as daemon:
        yield daemon, registry.push("pulls/m:v1", image)


def control(daemon: LocalSnapshotter) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(daemon.address.with_suffix(".control.sock")))
    return httpx.Client(transport=transport, base_url="http://lazy2dfs", timeout=30)


def pull(daemon: LocalSnapshotter, ref: str, containerd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lazy2dfs_argv(), "pull", "-a", str(containerd), ref],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LAZY2DFS_ADDRESS": str(daemon.address)},
    )


@pytest.mark.parametrize(
    ("method", "body", "code", "says"),
    [
        ("GET", None, 405, "POST"),
        ("POST", b"", 400, "1 to 65536 bytes"),
        ("POST", b"x" * 70_000, 400, "1 to 65536 bytes"),
        ("POST", b"[1, 2]", 400, "not a pull request"),
        ("POST", b'{"reference": "m:v1"}', 400, "containerd_address"),
    ],
)
def test_what_is_not_a_pull_request_is_refused_with_the_reason(
    served: tuple[LocalSnapshotter, str], method: str, body: bytes | None, code: int, says: str
) -> None:
    daemon, _ = served
    with control(daemon) as client:
        answer = client.request(method, "/pull", content=body)
        assert (answer.status_code, says in answer.text) == (code, True), answer.text
        assert client.get("/healthz").status_code == 200


def test_a_failed_pull_names_containerd_frees_its_place_and_stores_nothing(
    served: tuple[LocalSnapshotter, str], tmp_path: Path
) -> None:
    """More failed pulls than run at once, one after another: none is refused as busy."""
    daemon, ref = served
    absent = tmp_path / "containerd.sock"
    for _ in range(MAX_PULLS + 1):
        failed = pull(daemon, ref, absent)
        assert failed.returncode == 1, failed.stderr
        assert str(absent) in failed.stderr and "busy" not in failed.stderr
        assert "Traceback" not in failed.stderr
    with control(daemon) as client:
        assert client.get("/healthz").status_code == 200
        assert sum(client.get("/status").json()["snapshots"].values()) == 0
