"""``lazy2dfs pull``: a lazy pull through containerd's own API, for containerd 1.6 and later.

``ctr images pull`` downloads every blob before it unpacks, and passes the snapshotter no
image labels; this pull instead puts only the manifest and config into containerd's content
store, prepares each layer with labels naming its blob (``containerd.io/snapshot/lazy2dfs.*``)
so the snapshotter can mount it lazily, and records the image. A layer the snapshotter cannot
serve lazily is downloaded and applied by containerd's diff service, as a normal pull would.
The garbage-collection labels written here are the ones containerd's own unpacker writes, so
removing the image removes its snapshots.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs.api import descriptor_pb2
from lazy2dfs.containerd.client import ContainerdClient
from lazy2dfs.digest import chain_ids
from lazy2dfs.errors import AlreadyExistsError, IntegrityError, InvalidArgumentError
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client import (
    OCI_MANIFEST,
    Descriptor,
    FetchedManifest,
    ImageIndex,
    ImageManifest,
    Reference,
    SyncRegistryClient,
    host_platform,
    parse_manifest,
    parse_reference,
    select_platform,
)
from lazy2dfs.snapshotter import labels as L
from lazy2dfs.tdfs import (
    FIELD_MEDIA_TYPE,
    field_descriptor,
    missing_sizes,
    parse_field,
    partition_image,
)

log = get_logger(__name__)


def to_proto(descriptor: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=descriptor.media_type,
        digest=descriptor.digest,
        size=descriptor.size,
        annotations=descriptor.annotations or {},
    )


@dataclass(frozen=True)
class ResolvedPull:
    reference: Reference
    pinned: Reference  # the repository's root manifest or index, by digest
    manifest: FetchedManifest
    config: bytes
    index: FetchedManifest | None
    manifest_in_registry: bool


@dataclass
class PullReport:
    image: str
    layers: int = 0
    lazy: int = 0
    present: int = 0
    downloaded: int = 0
    seconds: float = 0.0


Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Puller:
    containerd: ContainerdClient
    registry: SyncRegistryClient
    snapshotter: str = "lazy2dfs"
    progress: Progress = _stderr

    def resolve(self, reference: str) -> ResolvedPull:
        """The manifest, config and index to store; for a 2DFS reference, the partition's
        manifest and config, computed here from the field (the registry has no such manifest)."""
        ref = parse_reference(reference)
        root = self.registry.get_manifest(ref)
        pinned = ref.with_digest(root.descriptor.digest)
        manifest = root
        if isinstance(root.manifest, ImageIndex):
            entry = select_platform(root.manifest, host_platform())
            manifest = self.registry.get_manifest(pinned, entry.digest)
        if not isinstance(manifest.manifest, ImageManifest):
            raise IntegrityError(f"{ref}: {manifest.descriptor.digest} is not an image manifest")
        config = self.registry.get_blob(pinned, manifest.manifest.config.digest)
        is_2dfs = any(layer.media_type == FIELD_MEDIA_TYPE for layer in manifest.manifest.layers)
        if not is_2dfs:
            if ref.partitions:
                raise InvalidArgumentError(f"{ref} names partitions, but it is not a 2DFS image")
            index = root if root is not manifest else None
            return ResolvedPull(ref, pinned, manifest, config, index, manifest_in_registry=True)
        field = parse_field(
            self.registry.get_blob(pinned, field_descriptor(manifest.manifest).digest)
        )
        sizes = {
            d: self.registry.stat_blob(pinned, d) for d in missing_sizes(field, ref.partitions)
        }
        part = partition_image(manifest.manifest, config, field, ref.partitions, sizes)
        partitioned = FetchedManifest(
            Descriptor(
                mediaType=OCI_MANIFEST, digest=part.manifest_digest, size=len(part.manifest)
            ),
            part.manifest,
            parse_manifest(part.manifest, OCI_MANIFEST),
        )
        return ResolvedPull(ref, pinned, partitioned, part.config, None, manifest_in_registry=False)

    def pull(self, reference: str) -> PullReport:
        start = time.monotonic()
        resolved = self.resolve(reference)
        ref, manifest = resolved.reference, resolved.manifest
        assert isinstance(manifest.manifest, ImageManifest)
        config_desc = manifest.manifest.config
        try:
            diff_ids: list[str] = list(json.loads(resolved.config)["rootfs"]["diff_ids"])
        except (ValueError, RecursionError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"{ref}: the image config has no rootfs.diff_ids: {exc!r}"
            ) from exc
        layers = manifest.manifest.layers
        if len(diff_ids) != len(layers):
            raise IntegrityError(
                f"{ref}: config lists {len(diff_ids)} diff IDs for {len(layers)} layers"
            )
        chains = chain_ids(diff_ids)
        report = PullReport(str(ref), layers=len(layers))
        self.progress(f"{ref}: {len(layers)} layers, manifest {manifest.descriptor.digest}")
        manifest_label = manifest.descriptor.digest if resolved.manifest_in_registry else ""
        with self.containerd.lease():
            parent = ""
            for number, (layer, chain, diff_id) in enumerate(
                zip(layers, chains, diff_ids, strict=True), 1
            ):
                how = self._unpack(
                    str(resolved.pinned), manifest_label, layer, chain, parent, diff_id
                )
                setattr(report, how, getattr(report, how) + 1)
                self.progress(
                    f"  layer {number}/{len(layers)} {layer.digest[7:19]}"
                    f" {layer.size / 2**20:9.1f} MiB  {how}"
                )
                parent = chain
            gc_snapshot = {f"containerd.io/gc.ref.snapshot.{self.snapshotter}": chains[-1]}
            self.containerd.write_content(
                config_desc.digest, resolved.config, config_desc.size, gc_snapshot if chains else {}
            )
            manifest_labels = {"containerd.io/gc.ref.content.config": config_desc.digest}
            for number, layer in enumerate(layers):
                manifest_labels[f"containerd.io/gc.ref.content.l.{number}"] = layer.digest
            self._put(manifest.descriptor, manifest.data, manifest_labels)
            root = manifest
            if resolved.index is not None:
                root = resolved.index
                assert isinstance(root.manifest, ImageIndex)
                children = {
                    f"containerd.io/gc.ref.content.m.{n}": m.digest
                    for n, m in enumerate(root.manifest.manifests)
                }
                self._put(root.descriptor, root.data, children)
            self.containerd.put_image(str(ref), to_proto(root.descriptor))
        report.seconds = time.monotonic() - start
        self.progress(
            f"{ref}: {report.lazy} lazy, {report.present} present, "
            f"{report.downloaded} downloaded in {report.seconds:.2f}s"
        )
        return report

    def _put(self, descriptor: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        self.containerd.write_content(descriptor.digest, data, descriptor.size, labels)

    def _unpack(
        self,
        image: str,
        manifest_digest: str,
        layer: Descriptor,
        chain: str,
        parent: str,
        diff_id: str,
    ) -> str:
        """Makes snapshot ``chain`` exist; says how: lazy, present or downloaded."""
        if self.containerd.snapshot_exists(self.snapshotter, chain):
            return "present"
        labels = {
            L.TARGET_REF: chain,
            L.OWN_REFERENCE: image,
            L.OWN_LAYER_DIGEST: layer.digest,
            L.OWN_LAYER_SIZE: str(layer.size),
            L.OWN_DIFF_ID: diff_id,
        }
        if manifest_digest:
            labels[L.OWN_MANIFEST_DIGEST] = manifest_digest
        toc = (layer.annotations or {}).get(TOC_DIGEST_ANNOTATION)
        if toc:
            labels[L.OWN_TOC_DIGEST] = toc
        key = f"extract-{uuid.uuid4().hex[:16]} {chain}"
        try:
            mounts = self.containerd.prepare(self.snapshotter, key, parent, labels)
        except AlreadyExistsError:
            return "lazy"
        try:
            with tempfile.TemporaryDirectory(prefix="lazy2dfs-pull-") as tmp:
                blob = Path(tmp) / "layer"
                self.registry.download_blob(image, layer.digest, blob)
                self.containerd.write_content(layer.digest, blob, layer.size, {})
            applied = self.containerd.apply(to_proto(layer), mounts)
            if applied != diff_id:
                # containerd's own unpack refuses this too: the layer is not the one the
                # config (and so the chain ID) names, and must not appear under that name.
                raise IntegrityError(
                    f"{image}: layer {layer.digest} unpacks to diff ID {applied}, but the image's"
                    f" config says {diff_id}: the image is inconsistent or forged"
                )
            self.containerd.commit(self.snapshotter, chain, key, {L.TARGET_REF: chain})
        except BaseException:
            self.containerd.remove(self.snapshotter, key)
            raise
        return "downloaded"
