"""An image whose config copies another image's layer diff ID (issue 14, item 1): its files
must never appear in the other image's containers.

containerd names layer snapshots by chain IDs built from the config's diff IDs, and a lazy
mount cannot check a diff ID until every byte of the layer is there. So: a layer not yet
checked is never reused under its chain ID for a layer from another blob (that layer is
downloaded instead), and a layer whose bytes turn out not to hash to its diff ID is refused —
reads fail and no container mounts it. What remains is docs/security.md's window: in one
containerd namespace, containerd itself reuses the chain ID without asking the snapshotter,
until the check refuses the layer."""

import dataclasses
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from devstack.images import BuiltImage, build_image, build_layer
from devstack.model import runtime_tree
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack

ESTARGZ = WriterOptions(chunk_size=256 * 1024, mtime=946684800)
VICTIM = os.urandom(1 << 20)
ATTACKER = os.urandom(1 << 20)
REFUSED_TIMEOUT = 120.0
WEIGHTS = "/model/weights.bin"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with private_stack(tmp_path_factory.mktemp("poison"), cri=True) as running:
        yield running


def images() -> tuple[BuiltImage, BuiltImage]:
    """The victim's image, and the attacker's: same base, attacker's weights, victim's diff ID."""
    base = build_layer(runtime_tree())
    victim_layer = build_layer({"model/weights.bin": VICTIM}, estargz=ESTARGZ)
    forged = dataclasses.replace(
        build_layer({"model/weights.bin": ATTACKER}, estargz=ESTARGZ),
        diff_id=victim_layer.diff_id,
    )
    return build_image([base, victim_layer]), build_image([base, forged])


def pull(stack: Stack, namespace: str, ref: str) -> str:
    done = subprocess.run(
        stack.containerd.pull_argv(ref, "--namespace", namespace),
        capture_output=True,
        text=True,
        timeout=300,
        env=stack.containerd.pull_env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def weights_hash(
    stack: Stack, namespace: str, ref: str, name: str
) -> subprocess.CompletedProcess[str]:
    ctr = ["ctr", "--address", str(stack.containerd.address), "--namespace", namespace]
    return subprocess.run(
        [
            *ctr,
            "run",
            "--rm",
            "--snapshotter",
            "lazy2dfs",
            ref,
            name,
            "sha256sum",
            "/model/weights.bin",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for_refusal(stack: Stack) -> None:
    log = stack.snapshotter.workdir / "lazy2dfs.log"
    deadline = time.monotonic() + REFUSED_TIMEOUT
    while "layer is not what its image says" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the forged layer was never refused"
        time.sleep(0.2)


def test_a_forged_layer_is_refused_and_never_reused_for_another_image(stack: Stack) -> None:
    victim, attacker = images()
    victim_ref = stack.push("tenant-b/model:v1", victim)
    attacker_ref = stack.push("tenant-a/model:v1", attacker)
    # Tenant A pulls first: its forged layer is mounted lazily under the victim's chain ID.
    assert "1 lazy" in pull(stack, "tenant-a", attacker_ref)
    # Tenant B, in its own namespace, before A's layer is checked: the snapshotter is asked,
    # and does not reuse a chain ID it has not checked for another blob.
    report = pull(stack, "tenant-b", victim_ref)
    assert "0 lazy" in report and "2 downloaded" in report, report  # base (plain) and model
    ran = weights_hash(stack, "tenant-b", victim_ref, "victim")
    assert ran.returncode == 0, ran.stderr
    assert hashlib.sha256(VICTIM).hexdigest() in ran.stdout
    # Once all of A's layer is checked, it is refused: A's own containers do not run on it.
    wait_for_refusal(stack)
    forged = weights_hash(stack, "tenant-a", attacker_ref, "attacker")
    assert hashlib.sha256(ATTACKER).hexdigest() not in forged.stdout
    assert forged.returncode != 0 and "refused" in forged.stderr, forged.stderr
