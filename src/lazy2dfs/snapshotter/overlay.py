"""containerd's snapshot semantics on plain directories and overlayfs.

The model is containerd's own overlayfs snapshotter: every snapshot owns ``snapshots/<id>/fs``
(its upper directory) and, while active, ``snapshots/<id>/work``; committing only flips the
metadata, so a committed snapshot's files never move. Directories are created under a temporary
name and renamed into place inside the metadata transaction, and removed by renaming them away
first, so a crash at any point leaves at worst an orphan directory that ``cleanup`` deletes.

Remote snapshots (see ``snapshotter.remote``) are committed snapshots without a directory of
their own: their files are a directory of the FUSE mount, which overlay takes as a lower dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazy2dfs import metrics
from lazy2dfs.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from lazy2dfs.logfmt import get_logger
from lazy2dfs.snapshotter import filters
from lazy2dfs.snapshotter.labels import LayerRequest, layer_request
from lazy2dfs.snapshotter.mounts import Mount, OverlayFeatures, snapshot_mounts
from lazy2dfs.snapshotter.remote import NotLazyError, OnCancel, RemoteLayers
from lazy2dfs.snapshotter.snapshot import Info, Kind, Usage
from lazy2dfs.snapshotter.store import Parent, Record, Store

log = get_logger(__name__)

_DOOMED_PREFIX = "rm-"


def disk_usage(root: Path) -> Usage:
    """Blocks in use and distinct inodes below ``root`` (itself included), hard links once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [os.fspath(root)]
    first = os.lstat(root)
    seen.add((first.st_dev, first.st_ino))
    size += first.st_blocks * 512
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                ident = (st.st_dev, st.st_ino)
                if ident not in seen:
                    seen.add(ident)
                    size += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return Usage(size=size, inodes=len(seen))


def _doomed_name(name: str) -> str:
    """A unique name for a directory on its way out, so a stuck one never blocks another."""
    return f"{_DOOMED_PREFIX}{name}-{uuid.uuid4().hex[:8]}"


def _remove_tree(path: Path) -> None:
    def ignore_vanished(
        func: object, name: str, exc_info: tuple[type, BaseException, object]
    ) -> None:
        exc = exc_info[1]
        if not isinstance(exc, FileNotFoundError):
            log.warning(
                "snapshot directory not removed",
                path=name,
                error=exc,
                action="'lazy2dfs' retries at the next Cleanup; check for mounts below it",
            )

    shutil.rmtree(path, onerror=ignore_vanished)


def _record_fallback(request: LayerRequest, exc: NotLazyError) -> None:
    """The one place a download is recorded: the log, the counters, ``lazy2dfs status``.

    A layer not in a lazy format is downloaded as its image asks (the plain base of a 2DFS
    image, a small layer): logged at info and counted apart, so that an alert on fallbacks
    fires only for layers that were meant to be lazy and are not."""
    metrics.RECENT_FALLBACKS.record(
        request.layer_digest, request.reference, exc.reason, str(exc), exc.by_design
    )
    if exc.by_design:
        metrics.PLAIN_LAYERS.labels(exc.reason).inc()
        log.info(
            "layer downloaded: not in a lazy format",
            layer=request.layer_digest,
            image=request.reference,
            reason=exc.reason,
            action="to pull it lazily, convert the image (lazy2dfs convert SRC DST)",
        )
        return
    metrics.FALLBACKS.labels(exc.reason).inc()
    log.warning(
        "layer fallback",
        layer=request.layer_digest,
        image=request.reference,
        reason=exc.reason,
        detail=exc,
        action="containerd downloads this layer in full",
    )


class OverlaySnapshotter:
    """The snapshots of one daemon root."""

    def __init__(
        self,
        root: Path,
        store: Store,
        features: OverlayFeatures,
        remote: RemoteLayers[Any] | None = None,
    ) -> None:
        self._dir = root / "snapshots"
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Whatever the root's mode (kubelet's DirectoryOrCreate makes it 0755): no local user
        # walks into another tenant's layers.
        os.chmod(self._dir, 0o700)
        self._store = store
        self._features = features
        self._remote = remote
        self.cleanup()
        if remote is not None:
            self._restore_remote(remote)

    def _path(self, snapshot_id: int) -> Path:
        return self._dir / str(snapshot_id)

    def upper(self, snapshot_id: int) -> Path:
        return self._path(snapshot_id) / "fs"

    def _files(self, parent: Parent) -> Path:
        if parent.remote and self._remote is not None:
            return self._remote.path(parent.id)
        return self.upper(parent.id)

    def _mounts(self, record: Record) -> list[Mount]:
        return snapshot_mounts(
            record.info.kind,
            upper=self.upper(record.id),
            work=self._path(record.id) / "work",
            lowers=[self._files(p) for p in record.parents],
            features=self._features,
        )

    def prepare(
        self, key: str, parent: str, labels: dict[str, str], on_cancel: OnCancel | None = None
    ) -> list[Mount]:
        request = layer_request(labels) if self._remote is not None else None
        if request is not None and self._commit_remote(request, parent, labels, on_cancel):
            raise AlreadyExistsError(
                f"target snapshot {request.chain_id!r} already exists: the layer is served lazily"
            )
        return self._create(Kind.ACTIVE, key, parent, labels)

    def _commit_remote(
        self,
        request: LayerRequest,
        parent: str,
        labels: dict[str, str],
        on_cancel: OnCancel | None,
    ) -> bool:
        """Commits ``request.chain_id`` as a remote snapshot; False means "download it"."""
        assert self._remote is not None
        with self._store.read() as tx:
            existing = tx.find(request.chain_id)
        if existing is not None:
            return self._reusable(existing, request)
        try:
            layer = self._remote.resolve(request, on_cancel)
        except NotLazyError as exc:
            _record_fallback(request, exc)
            return False
        with self._store.write() as tx:
            existing = tx.find(request.chain_id)
            if existing is not None:
                return self._reusable(existing, request)
            record = tx.create(
                Kind.COMMITTED,
                request.chain_id,
                parent,
                labels,
                remote=json.dumps(dataclasses.asdict(request)),
                usage=layer.usage,
            )
            self._remote.attach(record.id, layer)
        log.info(
            "layer mounted lazily",
            layer=request.layer_digest,
            image=request.reference,
            snapshot=request.chain_id,
            id=record.id,
        )
        return True

    def _reusable(self, existing: Record, request: LayerRequest) -> bool:
        """Whether the snapshot committed under ``request.chain_id`` may serve ``request``: the
        same blob, or a layer whose bytes were checked against the diff ID the chain ID is
        built from. Anything else could be another image's files passed off under this name
        (a forged config), so the layer is downloaded instead — and logged."""
        if existing.remote is None:
            return True  # downloaded and applied by containerd, which checked its diff ID
        assert self._remote is not None
        first = LayerRequest(**json.loads(existing.remote))
        if first.layer_digest == request.layer_digest or self._remote.verified(existing.id):
            return True
        _record_fallback(
            request,
            NotLazyError(
                "chain-conflict",
                f"snapshot {request.chain_id} is served for layer {first.layer_digest} of"
                f" {first.reference}, not yet checked against its diff ID; this layer is"
                " downloaded instead of trusting it",
            ),
        )
        return False

    def _restore_remote(self, remote: RemoteLayers[Any]) -> None:
        with self._store.read() as tx:
            records = tx.remote_records()
        for record in records:
            assert record.remote is not None
            request = LayerRequest(**json.loads(record.remote))
            remote.restore(record.id, request)
        remote.prune({record.id for record in records})

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        with self._store.write() as tx:
            staging = Path(tempfile.mkdtemp(prefix="new-", dir=self._dir))
            try:
                fs = staging / "fs"
                fs.mkdir(mode=0o755)
                os.chmod(fs, 0o755)  # not subject to the umask: containers expect 0755 roots
                if kind == Kind.ACTIVE:
                    (staging / "work").mkdir(mode=0o711)
                record = tx.create(kind, key, parent, labels)
                if record.parents:
                    # The new upper directory's owner shows as the container's root owner.
                    st = os.stat(self._files(record.parents[0]))
                    os.lchown(fs, st.st_uid, st.st_gid)
                os.rename(staging, self._path(record.id))
            except BaseException:
                _remove_tree(staging)
                raise
        log.debug("snapshot created", key=key, parent=parent, kind=kind.filter_name, id=record.id)
        return self._mounts(record)

    def mounts(self, key: str) -> list[Mount]:
        with self._store.read() as tx:
            record = tx.get(key)
        if record.info.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPreconditionError(f"snapshot {key!r} is committed: it has no mounts")
        return self._mounts(record)

    def commit(self, name: str, key: str, labels: dict[str, str]) -> None:
        with self._store.read() as tx:
            record = tx.get(key)
        if record.info.kind != Kind.ACTIVE:
            raise FailedPreconditionError(f"snapshot {key!r} is not active")
        usage = disk_usage(self.upper(record.id))
        with self._store.write() as tx:
            tx.commit(key, name, labels, usage)
        log.debug("snapshot committed", key=key, name=name, id=record.id)

    def remove(self, key: str) -> None:
        with self._store.write() as tx:
            record = tx.remove(key)
            if record.remote is None:
                doomed = self._dir / _doomed_name(str(record.id))
                try:
                    os.rename(self._path(record.id), doomed)
                except FileNotFoundError:
                    log.warning("snapshot directory already gone", key=key, id=record.id)
                    return
        if record.remote is not None:
            # After the commit: a crash in between leaves saved TOC bytes nobody owns (removed
            # at the next start), never a snapshot without its TOC.
            if self._remote is not None:
                self._remote.detach(record.id)
            log.debug("remote snapshot removed", key=key, id=record.id)
            return
        _remove_tree(doomed)
        log.debug("snapshot removed", key=key, id=record.id)

    def stat(self, key: str) -> Info:
        with self._store.read() as tx:
            return tx.get(key).info

    def update(self, info: Info, fieldpaths: Sequence[str]) -> Info:
        """Sets the labels ``fieldpaths`` name (``labels`` or ``labels.<key>``) from ``info``.

        A ``labels.<key>`` path whose key is absent or empty in ``info`` deletes that label:
        that is how containerd's garbage collector drops its references."""
        with self._store.write() as tx:
            labels = dict(tx.get(info.name).info.labels)
            if not fieldpaths:
                labels = dict(info.labels)
            for path in fieldpaths:
                if path == "labels":
                    labels = dict(info.labels)
                elif path.startswith("labels."):
                    label = path.removeprefix("labels.")
                    if info.labels.get(label):
                        labels[label] = info.labels[label]
                    else:
                        labels.pop(label, None)
                else:
                    raise InvalidArgumentError(
                        f"cannot update field {path!r} of snapshot {info.name!r}:"
                        " only labels are mutable"
                    )
            return tx.set_labels(info.name, labels).info

    def list(self, filter_texts: Sequence[str]) -> list[Info]:
        wanted = filters.parse(filter_texts)
        with self._store.read() as tx:
            records = tx.all()
        return [r.info for r in records if wanted.matches(r.info)]

    def usage(self, key: str) -> Usage:
        with self._store.read() as tx:
            record = tx.get(key)
        if record.info.kind == Kind.ACTIVE:
            return disk_usage(self.upper(record.id))
        return record.usage

    def count_by_kind(self) -> dict[Kind, int]:
        with self._store.read() as tx:
            return tx.count_by_kind()

    def cleanup(self) -> None:
        """Deletes every directory under ``snapshots/`` that no snapshot owns: leftovers of
        removals, of a crash mid-Prepare, or of snapshots containerd's GC removed."""
        with self._store.write() as tx:
            owned = {str(i) for i in tx.ids()}
            for entry in os.scandir(self._dir):
                if entry.name not in owned and not entry.name.startswith(_DOOMED_PREFIX):
                    os.rename(entry.path, self._dir / _doomed_name(entry.name))
        for entry in os.scandir(self._dir):
            if entry.name.startswith(_DOOMED_PREFIX):
                log.info("orphan snapshot directory removed", path=entry.path)
                _remove_tree(Path(entry.path))
