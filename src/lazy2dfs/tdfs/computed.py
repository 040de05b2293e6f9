"""Partitioned images computed on this node, kept by digest while containerd still asks.

A partitioned image exists nowhere but here: the partition mirror computes it when containerd
resolves a partition tag, then containerd fetches its manifest and config by digest, and the
snapshotter reads both again to mount its layers lazily (CRI's labels name the manifest by
digest). The mirror and the snapshotter run in different threads, hence the lock. Memory is
bounded: beyond ``max_bytes`` the least recently used images go, and a partition tag asked
again is computed again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

from lazy2dfs.tdfs.partition import PartitionedImage

DEFAULT_MAX_BYTES: Final = 32 << 20


class ComputedImages:
    """Manifests and configs of partitioned images, by digest."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._by_manifest: OrderedDict[str, PartitionedImage] = OrderedDict()
        self._manifest_of_config: dict[str, str] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, image: PartitionedImage) -> None:
        with self._lock:
            digest = image.manifest_digest
            if digest in self._by_manifest:
                self._by_manifest.move_to_end(digest)
                return
            self._by_manifest[digest] = image
            self._manifest_of_config[image.config_digest] = digest
            self._bytes += len(image.manifest) + len(image.config)
            while self._bytes > self.max_bytes and len(self._by_manifest) > 1:
                _, old = self._by_manifest.popitem(last=False)
                self._bytes -= len(old.manifest) + len(old.config)
                if self._manifest_of_config.get(old.config_digest) == old.manifest_digest:
                    del self._manifest_of_config[old.config_digest]

    def image(self, manifest_digest: str) -> PartitionedImage | None:
        with self._lock:
            image = self._by_manifest.get(manifest_digest)
            if image is not None:
                self._by_manifest.move_to_end(manifest_digest)
            return image

    def config(self, digest: str) -> bytes | None:
        """The config blob ``digest`` of a computed image, if one is kept."""
        with self._lock:
            manifest = self._manifest_of_config.get(digest)
            image = self._by_manifest.get(manifest) if manifest is not None else None
            return image.config if image is not None else None
