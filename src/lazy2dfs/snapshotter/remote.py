"""The remote-snapshot protocol's side of the snapshotter: what it needs from remote layers.

When Prepare's labels name a layer that can be served lazily, the snapshotter commits a
snapshot under the layer's chain ID whose files live in the FUSE mount, and answers
ALREADY_EXISTS; containerd then skips downloading the layer. ``RemoteLayers`` is what does the
network and FUSE work; the snapshotter only decides and records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from lazy2dfs.errors import Lazy2dfsError, UnavailableError
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.snapshot import Usage

# The reason for a layer that is not in a lazy format at all (plain tar.gz): downloading it is
# what its image asks for, not a failure.
NOT_LAZY_FORMAT = "not-lazy-format"


class NotLazyError(Lazy2dfsError):
    """This layer cannot be served lazily; containerd should download it as usual.

    ``reason`` is a short stable word for metrics (``not-lazy-format``, ``unreachable``,
    ``toc-mismatch``…); the message says what went wrong and what to do."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    @property
    def by_design(self) -> bool:
        """The layer was never meant to be lazy: a download is no fallback worth a warning."""
        return self.reason == NOT_LAZY_FORMAT


class ResolveCancelledError(UnavailableError):
    """containerd gave up on the Prepare that was opening this layer."""


# Registers a callback to run when the RPC ends (grpc.ServicerContext.add_callback).
OnCancel = Callable[[Callable[[], None]], object]


class ResolvedLayer(Protocol):
    """A layer whose TOC has been fetched and verified, ready to attach."""

    @property
    def usage(self) -> Usage: ...


Layer = TypeVar("Layer", bound=ResolvedLayer)


class RemoteLayers(Protocol[Layer]):
    def resolve(self, request: LayerRequest, on_cancel: OnCancel | None = None) -> Layer:
        """Fetches and verifies the layer's TOC; raises NotLazyError, or
        ResolveCancelledError once ``on_cancel``'s callback ran. Bounded in time."""
        ...

    def verified(self, snapshot_id: int) -> bool:
        """Whether the snapshot's bytes were checked against its image's diff ID."""
        ...

    def attach(self, snapshot_id: int, layer: Layer) -> None:
        """Shows the layer's tree at ``path(snapshot_id)``."""
        ...

    def restore(self, snapshot_id: int, request: LayerRequest) -> None:
        """Attaches a layer recorded before a restart."""
        ...

    def detach(self, snapshot_id: int) -> None: ...

    def prune(self, keep: set[int]) -> None:
        """Forgets what was saved for any snapshot not in ``keep`` (a crash mid-Remove)."""
        ...

    def path(self, snapshot_id: int) -> Path: ...
