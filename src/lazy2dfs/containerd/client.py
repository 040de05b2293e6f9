"""The containerd calls a lazy pull needs: content, images, leases, snapshots and diff.

Every call carries the namespace (``containerd-namespace``) and, inside ``lease()``, the
lease (``containerd-lease``), which keeps what the pull writes from the garbage collector until
the image record references it. containerd's gRPC errors become lazy2dfs's domain errors here.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from lazy2dfs import errors
from lazy2dfs.api import (
    content_pb2,
    content_pb2_grpc,
    descriptor_pb2,
    diff_pb2,
    diff_pb2_grpc,
    images_pb2,
    images_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    mount_pb2,
    snapshots_pb2,
    snapshots_pb2_grpc,
)

DEFAULT_ADDRESS = Path("/run/containerd/containerd.sock")
# How gRPC (hence containerd, about a proxy plugin) reports a socket it could not dial.
_DIALED = re.compile(r"dial(?:ing)? unix:?(/[^\s:\"]+)")
WRITE_CHUNK = 1 << 20
CALL_TIMEOUT = 600.0

_ERRORS: Mapping[grpc.StatusCode, type[errors.Lazy2dfsError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
}


def domain_error(exc: grpc.RpcError, what: str) -> errors.Lazy2dfsError:
    code: grpc.StatusCode = exc.code()
    kind = _ERRORS.get(code, errors.Lazy2dfsError)
    return kind(f"{what}: containerd says {code.name}: {exc.details()}")


class ContainerdClient:
    """One connection to containerd, scoped to a namespace."""

    def __init__(self, address: Path, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._channel = grpc.insecure_channel(
            f"unix:{address}",
            options=[("grpc.max_receive_message_length", 16 << 20)],
        )
        self._lease: str | None = None
        self.content = content_pb2_grpc.ContentStub(self._channel)
        self.images = images_pb2_grpc.ImagesStub(self._channel)
        self.leases = leases_pb2_grpc.LeasesStub(self._channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self._channel)
        self.diff = diff_pb2_grpc.DiffStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md = [("containerd-namespace", self.namespace)]
        if self._lease:
            md.append(("containerd-lease", self._lease))
        return tuple(md)

    def call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._unavailable(what, str(exc.details())) from exc
            raise domain_error(exc, what) from exc

    def _unavailable(self, what: str, details: str) -> errors.UnavailableError:
        """Tells containerd being down from containerd failing to dial a plugin's socket,
        which it reports with the same code."""
        dialed = _DIALED.search(details)
        if dialed is not None and Path(dialed.group(1)) != self.address:
            return errors.UnavailableError(
                f"{what}: containerd answers, but cannot reach the snapshotter's socket"
                f" {Path(dialed.group(1))}: the lazy2dfs daemon is not running there. Start it"
                " (`systemctl start lazy2dfs`, or `lazy2dfs serve`), or make its --address"
                f" and containerd's proxy_plugins address the same (containerd: {details})"
            )
        return errors.UnavailableError(
            f"{what}: containerd at {self.address} is unreachable: {details};"
            " is it running, and is -a/--address (or CONTAINERD_ADDRESS) right?"
        )

    @contextmanager
    def lease(self, expire: datetime.timedelta = datetime.timedelta(hours=1)) -> Iterator[str]:
        """A lease for the block; it expires by itself if this process dies."""
        until = datetime.datetime.now(datetime.UTC) + expire
        labels = {"containerd.io/gc.expire": until.strftime("%Y-%m-%dT%H:%M:%SZ")}
        response = self.call(
            "create lease",
            self.leases.Create,
            leases_pb2.CreateRequest(id=f"lazy2dfs-pull-{uuid.uuid4().hex}", labels=labels),
        )
        self._lease = response.lease.id
        try:
            yield response.lease.id
        finally:
            self._lease = None
            self.call(
                "delete lease", self.leases.Delete, leases_pb2.DeleteRequest(id=response.lease.id)
            )

    def has_content(self, digest: str) -> bool:
        try:
            self.call("content info", self.content.Info, content_pb2.InfoRequest(digest=digest))
        except errors.NotFoundError:
            return False
        return True

    def write_content(
        self, digest: str, data: bytes | Path, size: int, labels: Mapping[str, str]
    ) -> None:
        """Stores a blob (verified by containerd against ``digest``) with GC labels; if it is
        there already, only its labels are set."""
        if self.has_content(digest):
            self.set_content_labels(digest, labels)
            return
        ref = f"lazy2dfs-{digest}"

        def requests() -> Iterator[content_pb2.WriteContentRequest]:
            yield content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref)
            offset = 0
            for piece in _pieces(data):
                yield content_pb2.WriteContentRequest(
                    action=content_pb2.WRITE, ref=ref, offset=offset, data=piece
                )
                offset += len(piece)
            yield content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT,
                ref=ref,
                total=size,
                expected=digest,
                offset=offset,
                labels=dict(labels),
            )

        try:
            for _ in self.content.Write(
                requests(), metadata=self._metadata(), timeout=CALL_TIMEOUT
            ):
                pass
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                self.set_content_labels(digest, labels)
                return
            raise domain_error(exc, f"write {digest} into containerd") from exc

    def set_content_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        if not labels:
            return
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        info = content_pb2.Info(digest=digest, labels=dict(labels))
        self.call(
            f"label {digest}",
            self.content.Update,
            content_pb2.UpdateRequest(info=info, update_mask=mask),
        )

    def put_image(self, name: str, target: descriptor_pb2.Descriptor) -> None:
        image = images_pb2.Image(name=name, target=target)
        try:
            self.call(
                "create image", self.images.Create, images_pb2.CreateImageRequest(image=image)
            )
        except errors.AlreadyExistsError:
            mask = field_mask_pb2.FieldMask(paths=["target"])
            self.call(
                "update image",
                self.images.Update,
                images_pb2.UpdateImageRequest(image=image, update_mask=mask),
            )

    def snapshot_exists(self, snapshotter: str, key: str) -> bool:
        try:
            self.call(
                "stat snapshot",
                self.snapshots.Stat,
                snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
            )
        except errors.NotFoundError:
            return False
        return True

    def prepare(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[mount_pb2.Mount]:
        response = self.call(
            f"prepare {key}",
            self.snapshots.Prepare,
            snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels)
            ),
        )
        return list(response.mounts)

    def commit(self, snapshotter: str, name: str, key: str, labels: Mapping[str, str]) -> None:
        self.call(
            f"commit {name}",
            self.snapshots.Commit,
            snapshots_pb2.CommitSnapshotRequest(
                snapshotter=snapshotter, name=name, key=key, labels=dict(labels)
            ),
        )

    def remove(self, snapshotter: str, key: str) -> None:
        self.call(
            f"remove {key}",
            self.snapshots.Remove,
            snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
        )

    def apply(self, layer: descriptor_pb2.Descriptor, mounts: list[mount_pb2.Mount]) -> str:
        """Unpacks ``layer`` onto ``mounts``; returns the digest of the tar applied (its diff
        ID), which the caller must check against the image's config."""
        response = self.call(
            f"apply {layer.digest}",
            self.diff.Apply,
            diff_pb2.ApplyRequest(diff=layer, mounts=mounts),
        )
        return str(response.applied.digest)


def _pieces(data: bytes | Path) -> Iterator[bytes]:
    if isinstance(data, bytes):
        for start in range(0, len(data), WRITE_CHUNK):
            yield data[start : start + WRITE_CHUNK]
        return
    with open(data, "rb") as f:
        while piece := f.read(WRITE_CHUNK):
            yield piece
