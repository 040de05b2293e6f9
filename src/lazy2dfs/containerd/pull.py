"""``lazy2dfs pull``: a lazy pull through containerd's own API, for containerd 1.6 and later.

``ctr images pull`` downloads every blob before it unpacks, and passes the snapshotter no
image labels; this pull instead puts only the manifest and config into containerd's content
store, prepares each layer with labels naming its blob (``containerd.io/snapshot/lazy2dfs.*``)
so the snapshotter can mount it lazily, and records the image. A layer the snapshotter cannot
serve lazily is downloaded and applied by containerd's diff service, as a normal pull would.
The garbage-collection labels written here are the ones containerd's own unpacker writes, so
removing the image removes its snapshots.

The daemon runs it (``pull_service``, asked by the ``lazy2dfs pull`` command). Before
anything is written, the pull checks that the daemon reaches the registry as the pull does
(``containerd.reach``: the command may add ``--plain-http`` or ``--hosts-dir``) and refuses with
the fix when it does not; afterwards it says, for each layer that was downloaded, why, as the
daemon recorded it.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from lazy2dfs.api import descriptor_pb2
from lazy2dfs.config import DEFAULT_CONFIG_PATH
from lazy2dfs.containerd import reach
from lazy2dfs.containerd.client import ContainerdClient
from lazy2dfs.digest import chain_ids
from lazy2dfs.errors import AlreadyExistsError, IntegrityError, InvalidArgumentError
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION
from lazy2dfs.logfmt import get_logger
from lazy2dfs.progress import Progress, human_bytes
from lazy2dfs.registry_client import (
    OCI_MANIFEST,
    Descriptor,
    FetchedManifest,
    ImageIndex,
    ImageManifest,
    Reference,
    SyncRegistryClient,
    UnauthorizedError,
    host_platform,
    parse_manifest,
    parse_reference,
    select_platform,
)
from lazy2dfs.snapshotter import labels as L
from lazy2dfs.snapshotter.remote import NOT_LAZY_FORMAT
from lazy2dfs.status import ProgressSink, RegistryAnswer, StatusReport
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
class PulledLayer:
    digest: str
    size: int
    how: str  # lazy, present or downloaded
    reason: str = ""  # why a downloaded layer was downloaded, as the daemon recorded it
    detail: str = ""


@dataclass
class PullReport:
    image: str
    manifest: str = ""
    layers: list[PulledLayer] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, how: str) -> int:
        return sum(1 for layer in self.layers if layer.how == how)

    def to_json(self) -> dict[str, object]:
        counts = {how: self.count(how) for how in ("lazy", "present", "downloaded")}
        return {**asdict(self), **counts}


class Daemon(Protocol):
    """What the pull asks of the lazy2dfs daemon: in the daemon, ``Observability``; elsewhere
    (tests, scripts), its control socket (``lazy2dfs.status.ControlClient``)."""

    def registry(self, registry: str, reference: str = "") -> RegistryAnswer: ...

    def status(self) -> StatusReport: ...


@dataclass
class Puller:
    containerd: ContainerdClient
    registry: SyncRegistryClient
    daemon: Daemon
    snapshotter: str = "lazy2dfs"
    progress: ProgressSink = field(default_factory=Progress)
    daemon_config: str = str(DEFAULT_CONFIG_PATH)  # where the daemon's settings are, for fixes
    # The pull reaches registries exactly as the daemon's layer reads do (its settings and
    # credentials, nothing added): its own manifest fetch is the daemon's, not checked twice.
    daemon_settings: bool = False
    # Told the labels of every layer before the first is prepared (the daemon opens their TOCs
    # at once, instead of one Prepare after another).
    ahead: Callable[[list[dict[str, str]]], None] | None = None

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
        registry = parse_reference(reference).registry
        # Before the network: a daemon that is down, or configured apart, is named at once.
        daemon = self.daemon.registry(registry)
        reach.check_endpoints(self.registry.pull_endpoints(registry), daemon, self.daemon_config)
        try:
            resolved = self.resolve(reference)
        except UnauthorizedError as exc:
            if self.daemon_settings:
                raise reach.refused(reference, daemon, exc) from exc
            raise
        if not self.daemon_settings:
            reach.check_fetched(reference, self.daemon.registry(registry, str(resolved.pinned)))
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
        report = PullReport(str(ref), manifest.descriptor.digest)
        self.progress.step(f"{ref}: {len(layers)} layers, manifest {manifest.descriptor.digest}")
        manifest_label = manifest.descriptor.digest if resolved.manifest_in_registry else ""
        labels = [
            self._labels(str(resolved.pinned), manifest_label, layer, chain, diff_id)
            for layer, chain, diff_id in zip(layers, chains, diff_ids, strict=True)
        ]
        if self.ahead is not None:
            self.ahead(labels)
        with self.containerd.lease():
            parent = ""
            for number, (layer, chain, layer_labels) in enumerate(
                zip(layers, chains, labels, strict=True), 1
            ):
                how = self._unpack(str(resolved.pinned), layer, chain, parent, layer_labels)
                pulled = PulledLayer(layer.digest, layer.size, how)
                if how == "downloaded":
                    pulled.reason, pulled.detail = self._why_downloaded(layer, str(resolved.pinned))
                report.layers.append(pulled)
                self.progress.step(f"  layer {number}/{len(layers)} {_describe(pulled)}")
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
        summary = (
            f"{ref}: {report.count('lazy')} lazy, {report.count('present')} present, "
            f"{report.count('downloaded')} downloaded in {report.seconds:.2f}s"
        )
        plain = sum(1 for layer in report.layers if layer.reason == NOT_LAZY_FORMAT)
        if plain:
            summary += (
                f"\n{plain} layer(s) are plain tar.gz, downloaded in full at every pull: to pull"
                " them lazily, convert the image (`lazy2dfs convert SRC DST`); for a 2DFS image,"
                " convert its base and build on the result"
            )
        self.progress.done(summary)
        return report

    def _why_downloaded(self, layer: Descriptor, image: str) -> tuple[str, str]:
        """The daemon's reason for not serving ``layer`` lazily: the newest record of it."""
        recent = self.daemon.status()["fallbacks"]["recent"]
        for item in reversed(recent):
            if item["layer"] == layer.digest and item["image"] == image:
                return str(item["reason"]), str(item["detail"])
        return "unknown", "not in the daemon's recent fallbacks: see its log ('layer fallback')"

    def _put(self, descriptor: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        self.containerd.write_content(descriptor.digest, data, descriptor.size, labels)

    @staticmethod
    def _labels(
        image: str, manifest_digest: str, layer: Descriptor, chain: str, diff_id: str
    ) -> dict[str, str]:
        """The Prepare labels that let the snapshotter serve ``layer`` lazily."""
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
        return labels

    def _unpack(
        self, image: str, layer: Descriptor, chain: str, parent: str, labels: dict[str, str]
    ) -> str:
        """Makes snapshot ``chain`` exist; says how: lazy, present or downloaded."""
        if self.containerd.snapshot_exists(self.snapshotter, chain):
            return "present"
        key = f"extract-{uuid.uuid4().hex[:16]} {chain}"
        try:
            mounts = self.containerd.prepare(self.snapshotter, key, parent, labels)
        except AlreadyExistsError:
            return "lazy"
        try:
            with tempfile.TemporaryDirectory(prefix="lazy2dfs-pull-") as tmp:
                blob = Path(tmp) / "layer"
                self.progress.step(f"  downloading {layer.digest[7:19]} {human_bytes(layer.size)}")
                self.registry.download_blob(
                    image,
                    layer.digest,
                    blob,
                    lambda n: self.progress.update(n, layer.size, f"layer {layer.digest[7:19]}"),
                )
                self.containerd.write_content(layer.digest, blob, layer.size, {})
            applied = self.containerd.apply(to_proto(layer), mounts)
            diff_id = labels[L.OWN_DIFF_ID]
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


def _describe(layer: PulledLayer) -> str:
    line = f"{layer.digest[7:19]} {human_bytes(layer.size):>10}  {layer.how}"
    return f"{line}: {layer.reason}: {layer.detail}" if layer.reason else line
