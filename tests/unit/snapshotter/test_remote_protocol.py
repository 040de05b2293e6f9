"""The remote-snapshot protocol's decisions, with the network side stood in by a directory."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lazy2dfs import metrics
from lazy2dfs.errors import AlreadyExistsError, InvalidArgumentError
from lazy2dfs.snapshotter import labels as L
from lazy2dfs.snapshotter.labels import LayerRequest, layer_request
from lazy2dfs.snapshotter.mounts import OverlayFeatures
from lazy2dfs.snapshotter.overlay import OverlaySnapshotter
from lazy2dfs.snapshotter.remote import NotLazyError, OnCancel
from lazy2dfs.snapshotter.snapshot import Kind, Usage
from lazy2dfs.snapshotter.store import Store

DIGEST = "sha256:" + "a" * 64
CHAIN = "sha256:" + "c" * 64


@dataclass
class Resolved:
    usage: Usage


@dataclass
class DirectoryLayers:
    """Serves every layer as an empty directory; refuses digests listed in ``refuse``."""

    root: Path
    refuse: set[str] = field(default_factory=set)
    attached: dict[int, LayerRequest | None] = field(default_factory=dict)
    pruned_to: set[int] = field(default_factory=set)
    verified_ids: set[int] = field(default_factory=set)

    def resolve(self, request: LayerRequest, on_cancel: OnCancel | None = None) -> Resolved:
        if request.layer_digest in self.refuse:
            raise NotLazyError("no-toc", "plain tar.gz")
        return Resolved(Usage(size=123, inodes=4))

    def attach(self, snapshot_id: int, layer: Resolved) -> None:
        self.path(snapshot_id).mkdir(parents=True)
        self.attached[snapshot_id] = None

    def restore(self, snapshot_id: int, request: LayerRequest) -> None:
        self.attached[snapshot_id] = request

    def verified(self, snapshot_id: int) -> bool:
        return snapshot_id in self.verified_ids

    def prune(self, keep: set[int]) -> None:
        self.pruned_to = keep

    def detach(self, snapshot_id: int) -> None:
        self.path(snapshot_id).rmdir()
        del self.attached[snapshot_id]

    def path(self, snapshot_id: int) -> Path:
        return self.root / "fuse" / str(snapshot_id)


def own_labels(digest: str = DIGEST) -> dict[str, str]:
    return {
        L.TARGET_REF: CHAIN,
        L.OWN_REFERENCE: "127.0.0.1:5000/model:v1",
        L.OWN_LAYER_DIGEST: digest,
        "containerd.io/snapshot/gc": "keep",
    }


def test_label_dialects() -> None:
    assert layer_request({"containerd.io/snapshot/other": "x"}) is None
    cri = {
        L.TARGET_REF: CHAIN,
        L.CRI_IMAGE_REF: "docker.io/library/m:1",
        L.CRI_LAYER_DIGEST: DIGEST,
        L.CRI_MANIFEST_DIGEST: DIGEST,
    }
    request = layer_request(cri)
    assert request is not None and request.manifest_digest == DIGEST
    stargz = {L.TARGET_REF: CHAIN, L.STARGZ_REFERENCE: "r", L.STARGZ_DIGEST: DIGEST}
    assert layer_request(stargz) == LayerRequest(CHAIN, "r", DIGEST)
    with pytest.raises(InvalidArgumentError, match="not a sha256"):
        layer_request({**own_labels(), L.OWN_LAYER_DIGEST: "sha256:../../x"})


def test_lazy_layer_is_committed_under_the_chain_id(tmp_path: Path) -> None:
    layers = DirectoryLayers(tmp_path)
    store = Store(tmp_path / "db")
    s = OverlaySnapshotter(tmp_path, store, OverlayFeatures(False, False), layers)
    with pytest.raises(AlreadyExistsError, match="lazily"):
        s.prepare(f"extract-1 {CHAIN}", "", own_labels())
    info = s.stat(CHAIN)
    assert info.kind == Kind.COMMITTED and info.labels == own_labels()
    assert s.usage(CHAIN) == Usage(123, 4)
    (view,) = s.view("v", CHAIN, {})
    assert view.source == str(layers.path(1)) and view.options == ("ro", "rbind")
    s.prepare("container", CHAIN, {})
    s.remove("container")
    s.remove("v")
    s.remove(CHAIN)
    assert layers.attached == {}
    store.close()


def test_a_layer_that_cannot_be_lazy_falls_back_to_an_ordinary_snapshot(tmp_path: Path) -> None:
    layers = DirectoryLayers(tmp_path, refuse={DIGEST})
    store = Store(tmp_path / "db")
    s = OverlaySnapshotter(tmp_path, store, OverlayFeatures(False, False), layers)
    before = metrics.FALLBACKS.labels("no-toc")._value.get()
    (mount,) = s.prepare(f"extract-1 {CHAIN}", "", own_labels())
    assert mount.type == "bind" and s.stat(f"extract-1 {CHAIN}").kind == Kind.ACTIVE
    # Counted and listed for `lazy2dfs status`, once.
    assert metrics.FALLBACKS.labels("no-toc")._value.get() == before + 1
    last = metrics.RECENT_FALLBACKS.items()[-1]
    assert (last.layer, last.image, last.reason) == (DIGEST, "127.0.0.1:5000/model:v1", "no-toc")
    store.close()


def test_a_chain_id_is_reused_for_another_blob_only_once_checked(tmp_path: Path) -> None:
    """The same chain ID asked for with another layer blob (another image's config claiming
    that diff ID, or the same layer recompressed): reused only once the committed layer's
    bytes were checked against the diff ID; until then the new one is downloaded."""
    layers = DirectoryLayers(tmp_path)
    store = Store(tmp_path / "db")
    s = OverlaySnapshotter(tmp_path, store, OverlayFeatures(False, False), layers)
    with pytest.raises(AlreadyExistsError):
        s.prepare(f"extract-1 {CHAIN}", "", own_labels())
    with pytest.raises(AlreadyExistsError):  # the same blob again: reused
        s.prepare(f"extract-2 {CHAIN}", "", own_labels())
    other = "sha256:" + "b" * 64
    (mount,) = s.prepare(f"extract-3 {CHAIN}", "", own_labels(other))
    assert mount.type == "bind"  # an ordinary snapshot: containerd downloads the layer
    last = metrics.RECENT_FALLBACKS.items()[-1]
    assert (last.layer, last.reason) == (other, "chain-conflict")
    layers.verified_ids.add(1)
    with pytest.raises(AlreadyExistsError):
        s.prepare(f"extract-4 {CHAIN}", "", own_labels(other))
    store.close()


def test_remote_snapshots_are_restored_after_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    s = OverlaySnapshotter(
        tmp_path, store, OverlayFeatures(False, False), DirectoryLayers(tmp_path)
    )
    with pytest.raises(AlreadyExistsError):
        s.prepare("k", "", own_labels())
    store.close()
    again = DirectoryLayers(tmp_path)
    store = Store(tmp_path / "db")
    OverlaySnapshotter(tmp_path, store, OverlayFeatures(False, False), again)
    restored = again.attached[1]
    assert restored is not None and restored.layer_digest == DIGEST
    store.close()
