"""The gRPC face of the snapshotter: containerd.services.snapshots.v1.Snapshots.

This module converts between protobuf messages and the domain types, and is the one place where
lazy2dfs errors become gRPC status codes (the codes containerd turns back into its errdefs).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from lazy2dfs import errors, metrics
from lazy2dfs.api import mount_pb2, snapshots_pb2
from lazy2dfs.logfmt import get_logger
from lazy2dfs.snapshotter.mounts import Mount
from lazy2dfs.snapshotter.overlay import OverlaySnapshotter
from lazy2dfs.snapshotter.snapshot import Info, Kind

log = get_logger(__name__)

# Most specific first: subclasses of these map to their parent's code.
STATUS_CODES: tuple[tuple[type[errors.Lazy2dfsError], grpc.StatusCode], ...] = (
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
)

# containerd's List streams in batches; 100 keeps each message far below gRPC's 4 MiB limit
# even with long labels.
LIST_BATCH = 100


def status_code(exc: BaseException) -> grpc.StatusCode:
    for error_type, code in STATUS_CODES:
        if isinstance(exc, error_type):
            return code
    return grpc.StatusCode.INTERNAL


Handler = TypeVar("Handler", bound=Callable[..., Any])


def _rpc(method: Handler) -> Handler:
    """Maps errors to status codes, and counts and times the call."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: SnapshotsService, request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return method(self, request, context)
        except errors.Lazy2dfsError as exc:
            code = status_code(exc)
            log.debug("call refused", method=name, code=code.name, reason=exc)
            context.abort(code, str(exc))
        except OSError as exc:
            code = grpc.StatusCode.INTERNAL
            log.error("call failed", method=name, error=exc, action="check disk space and mounts")
            context.abort(code, f"{name}: {exc}")
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.error("call failed", method=name, error=repr(exc), exc_info=True)
            context.abort(code, f"{name}: internal error: {exc!r}")
        finally:
            metrics.GRPC_CALLS.labels(name, code.name).inc()
            metrics.GRPC_LATENCY.labels(name).observe(time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def info_to_proto(info: Info) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=info.name,
        parent=info.parent,
        kind=int(info.kind),  # type: ignore[arg-type]
        created_at=_timestamp(info.created_ns),
        updated_at=_timestamp(info.updated_ns),
        labels=info.labels,
    )


def info_from_proto(message: snapshots_pb2.Info) -> Info:
    # Timestamps in an Update request may be Go's zero time, and the kind is immutable:
    # neither is read.
    return Info(
        name=message.name,
        parent=message.parent,
        kind=Kind.UNKNOWN,
        created_ns=0,
        updated_ns=0,
        labels=dict(message.labels),
    )


def mounts_to_proto(mounts: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


class SnapshotsService:
    """Serves one snapshotter; the request's ``snapshotter`` name is containerd's, not ours.

    Registered with add_SnapshotsServicer_to_server, which looks the methods up by name."""

    def __init__(self, snapshotter: OverlaySnapshotter) -> None:
        self._snapshotter = snapshotter

    @_rpc
    def Prepare(
        self, request: snapshots_pb2.PrepareSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.PrepareSnapshotResponse:
        # A Prepare containerd gives up on must stop opening the layer, not hold a thread.
        mounts = self._snapshotter.prepare(
            request.key, request.parent, dict(request.labels), context.add_callback
        )
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mounts_to_proto(mounts))

    @_rpc
    def View(
        self, request: snapshots_pb2.ViewSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.ViewSnapshotResponse:
        mounts = self._snapshotter.view(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=mounts_to_proto(mounts))

    @_rpc
    def Mounts(
        self, request: snapshots_pb2.MountsRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.MountsResponse:
        mounts = self._snapshotter.mounts(request.key)
        return snapshots_pb2.MountsResponse(mounts=mounts_to_proto(mounts))

    @_rpc
    def Commit(
        self, request: snapshots_pb2.CommitSnapshotRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._snapshotter.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_rpc
    def Remove(
        self, request: snapshots_pb2.RemoveSnapshotRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._snapshotter.remove(request.key)
        return empty_pb2.Empty()

    @_rpc
    def Stat(
        self, request: snapshots_pb2.StatSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.StatSnapshotResponse:
        info = self._snapshotter.stat(request.key)
        return snapshots_pb2.StatSnapshotResponse(info=info_to_proto(info))

    @_rpc
    def Update(
        self, request: snapshots_pb2.UpdateSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.UpdateSnapshotResponse:
        info = self._snapshotter.update(
            info_from_proto(request.info), list(request.update_mask.paths)
        )
        return snapshots_pb2.UpdateSnapshotResponse(info=info_to_proto(info))

    @_rpc
    def List(
        self, request: snapshots_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> Iterator[snapshots_pb2.ListSnapshotsResponse]:
        # Evaluated before the first message, so a bad filter fails the call cleanly.
        infos = [info_to_proto(i) for i in self._snapshotter.list(list(request.filters))]
        return iter(
            [
                snapshots_pb2.ListSnapshotsResponse(info=infos[i : i + LIST_BATCH])
                for i in range(0, len(infos), LIST_BATCH)
            ]
        )

    @_rpc
    def Usage(
        self, request: snapshots_pb2.UsageRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.UsageResponse:
        usage = self._snapshotter.usage(request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_rpc
    def Cleanup(
        self, request: snapshots_pb2.CleanupRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._snapshotter.cleanup()
        return empty_pb2.Empty()
