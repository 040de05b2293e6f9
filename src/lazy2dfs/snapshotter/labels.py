"""Which layer containerd wants, read from the labels Prepare carries.

Only labels under ``containerd.io/snapshot/`` (and ``containerd.io/snapshot.ref``) reach a
snapshotter. Three dialects name the image and layer:

* CRI (kubelet, crictl): ``containerd.io/snapshot/cri.image-ref``, ``…/cri.layer-digest``,
  ``…/cri.manifest-digest``; the CRI plugin adds them when ``disable_snapshot_annotations``
  is false.
* the stargz tools (``ctr-remote image rpull``, nerdctl with a stargz-named snapshotter):
  ``containerd.io/snapshot/remote/stargz.reference``, ``…/stargz.digest``.
* lazy2dfs's own pull, which also passes what it already knows from the manifest and config
  (TOC digest, blob size, diff ID), saving a manifest and a config fetch per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lazy2dfs.digest import is_sha256_digest
from lazy2dfs.errors import InvalidArgumentError

TARGET_REF = "containerd.io/snapshot.ref"

CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"

STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"

OWN_PREFIX = "containerd.io/snapshot/lazy2dfs."
OWN_REFERENCE = OWN_PREFIX + "reference"
OWN_LAYER_DIGEST = OWN_PREFIX + "layer-digest"
OWN_MANIFEST_DIGEST = OWN_PREFIX + "manifest-digest"
OWN_TOC_DIGEST = OWN_PREFIX + "toc-digest"
OWN_LAYER_SIZE = OWN_PREFIX + "layer-size"
OWN_DIFF_ID = OWN_PREFIX + "diff-id"


@dataclass(frozen=True)
class LayerRequest:
    """A layer to serve lazily: where it is, and what vouches for its TOC."""

    chain_id: str  # the snapshot name containerd will look for
    reference: str  # image reference (registry/repository[:tag][@digest])
    layer_digest: str
    manifest_digest: str = ""
    toc_digest: str = ""
    layer_size: int = 0
    diff_id: str = ""  # what the image's config says the layer's tar hashes to


def _digest(labels: Mapping[str, str], key: str, required: bool) -> str:
    value = labels.get(key, "")
    if not value and not required:
        return ""
    if not is_sha256_digest(value):
        raise InvalidArgumentError(f"label {key}={value!r} is not a sha256 digest")
    return value


def layer_request(labels: Mapping[str, str]) -> LayerRequest | None:
    """The layer named by ``labels``, or None when they do not ask for a remote snapshot."""
    chain_id = labels.get(TARGET_REF, "")
    if not chain_id:
        return None
    if OWN_REFERENCE in labels:
        size = labels.get(OWN_LAYER_SIZE, "0")
        if not size.isdigit():
            raise InvalidArgumentError(f"label {OWN_LAYER_SIZE}={size!r} is not a size")
        return LayerRequest(
            chain_id=chain_id,
            reference=labels[OWN_REFERENCE],
            layer_digest=_digest(labels, OWN_LAYER_DIGEST, required=True),
            manifest_digest=_digest(labels, OWN_MANIFEST_DIGEST, required=False),
            toc_digest=_digest(labels, OWN_TOC_DIGEST, required=False),
            layer_size=int(size),
            diff_id=_digest(labels, OWN_DIFF_ID, required=False),
        )
    if CRI_IMAGE_REF in labels and CRI_LAYER_DIGEST in labels:
        return LayerRequest(
            chain_id=chain_id,
            reference=labels[CRI_IMAGE_REF],
            layer_digest=_digest(labels, CRI_LAYER_DIGEST, required=True),
            manifest_digest=_digest(labels, CRI_MANIFEST_DIGEST, required=False),
        )
    if STARGZ_REFERENCE in labels and STARGZ_DIGEST in labels:
        return LayerRequest(
            chain_id=chain_id,
            reference=labels[STARGZ_REFERENCE],
            layer_digest=_digest(labels, STARGZ_DIGEST, required=True),
        )
    return None
