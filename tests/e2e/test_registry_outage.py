"""A registry restarting while a container reads: the read waits (retrying with backoff up to
``fetch.deadline_seconds``) and gets its bytes once the registry is back, and meanwhile
``lazy2dfs status`` and ``/healthz`` say which registry is failing, since when and why."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from devstack.images import build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

DEADLINE = 30.0
OUTAGE = 4.0  # longer than the five quick retries that used to end a read at ~0.5 s
CHUNK = 256 * 1024
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
WEIGHTS = os.urandom(8 * CHUNK)
SEEN_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = f"[fetch]\nbackground = false\ndeadline_seconds = {DEADLINE}\n"
    with private_stack(tmp_path_factory.mktemp("outage"), config=config) as stack:
        yield stack


def test_a_read_waits_out_a_registry_restart_and_status_shows_the_failing_registry(
    outage_stack: Stack,
) -> None:
    stack = outage_stack
    image = build_image(
        [
            build_layer(runtime_tree(), estargz=ESTARGZ),
            build_layer({"model/w.bin": WEIGHTS}, estargz=ESTARGZ),
        ]
    )
    ref = stack.push("outage/model:v1", image)
    assert "2 lazy" in stack.containerd.lazy_pull(ref)
    host = stack.registry.host
    assert stack.status_json()["health"] == "ok"

    stack.registry.stop()
    read: dict[str, object] = {}

    def container_reads() -> None:
        started = time.monotonic()
        try:
            read["out"] = stack.run(ref, "reader", "sha256sum /model/w.bin")
        except Exception as exc:  # reported by the assertions below
            read["error"] = exc
        read["seconds"] = time.monotonic() - started

    reader = threading.Thread(target=container_reads)
    outage_started = time.monotonic()
    reader.start()
    try:
        degraded = _wait_for(stack, lambda r: r["health"].startswith("degraded"))
        failing = {r["host"]: r for r in degraded["registries"]}[host]
        assert failing["failing_since"] > 0 and failing["failures"] >= 1
        assert f"nothing listens at {host}" in failing["last_error"]
        assert f"degraded: registry {host} failing since" in degraded["health"]
        human = _status_text(stack)
        assert f"DEGRADED: registry {host} failing since" in human
        assert f"registry {host}: failing since" in human and "last error:" in human
        assert degraded["healthy"] is True  # the daemon itself is fine: probes must not kill it
        status, body = _healthz(stack)
        assert status == 200 and body.startswith(f"degraded: registry {host} failing since")
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - outage_started)))
        assert reader.is_alive(), read  # still waiting, not failed
    finally:
        stack.registry.restart()
        reader.join(DEADLINE + 30)
    assert "error" not in read, read["error"]
    assert str(read["out"]).split()[0] == hashlib.sha256(WEIGHTS).hexdigest()
    assert OUTAGE <= float(str(read["seconds"])) < DEADLINE
    recovered = _wait_for(stack, lambda r: r["health"] == "ok")
    (again,) = [r for r in recovered["registries"] if r["host"] == host]
    assert again["failing_since"] == 0 and again["failures"] >= 1
    assert "answering again" in _status_text(stack)


def _wait_for(stack: Stack, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + SEEN_TIMEOUT
    while True:
        report = stack.status_json()
        if condition(report) or time.monotonic() > deadline:
            assert condition(report), report
            return report
        time.sleep(0.2)


def _healthz(stack: Stack) -> tuple[int, str]:
    """``/healthz`` on the daemon's control socket, as a probe on the node asks it."""
    control = stack.snapshotter.address.with_suffix(".control.sock")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(control)), timeout=30) as client:
        response = client.get("http://lazy2dfs/healthz")
    return response.status_code, response.text


def _status_text(stack: Stack) -> str:
    done = stack.status()
    assert done.returncode == 0, done.stderr
    return done.stdout
