"""Remote layers in eStargz (or zstd:chunked), attached to the FUSE mount.

Resolving a layer reads its footer and TOC — two range requests — and verifies the TOC against
the digest the image's manifest vouches for. A layer without such a digest, or that is not
seekable, is refused with ``NotLazyError`` and containerd downloads it instead. The footer and
TOC bytes are kept under ``<root>/layers/<id>/``, so a restarted daemon shows the same tree
without the network; the chunk cache keeps what was fetched.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import trio

from lazy2dfs import metrics
from lazy2dfs.errors import IntegrityError, Lazy2dfsError, UnavailableError
from lazy2dfs.estargz.blob import open_blob_async
from lazy2dfs.estargz.errors import FormatError, TocDigestMismatchError
from lazy2dfs.estargz.toc import EntryType, Toc, TocEntry
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.fuse.tree import Entry, LayerTree
from lazy2dfs.layers.locator import LayerLocator
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.retry import on_behalf_of
from lazy2dfs.remote.reader import BlobSource, ChunkPool, LayerReader
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError
from lazy2dfs.snapshotter.snapshot import Usage

log = get_logger(__name__)


# Verified TOCs kept in memory by layer and TOC digest, so a blob mounted again under another
# parent is not opened again. A TOC of a large model layer is a few hundred KiB parsed.
OPENED_TOCS = 256


@dataclass
class RecordedRanges:
    """The ranges read while opening a blob, to replay them after a restart."""

    ranges: dict[int, bytes] = field(default_factory=dict)

    def recording(self, source: BlobSource) -> BlobSource:
        recorder = self

        class Recording:
            async def read_range(self, offset: int, length: int) -> bytes:
                data = await source.read_range(offset, length)
                recorder.ranges[offset] = data
                return data

        return Recording()

    async def read_range(self, offset: int, length: int) -> bytes:
        data = self.ranges.get(offset, b"")
        if len(data) < length:
            raise IntegrityError(f"saved TOC has no range {offset}+{length}")
        # A layer saved before the TOC read skipped the bytes the tail holds has the whole
        # member at this offset: its start is what is asked for now.
        return data[:length]


@dataclass
class ResolvedEstargz:
    request: LayerRequest
    toc: Toc
    toc_digest: str
    size: int
    recorded: RecordedRanges
    fetched: int = 0  # bytes resolving took from the registry; 0 when the TOC was known

    @property
    def usage(self) -> Usage:
        files = [e for e in self.toc.entries if e.type is not EntryType.CHUNK]
        return Usage(size=sum(e.size for e in files), inodes=len(files))


def _mtime_ns(modtime: datetime | None) -> int:
    return int(modtime.timestamp() * 1_000_000_000) if modtime else 0


def tree_entries(toc: Toc) -> Iterator[Entry]:
    """The TOC's entries as the FUSE tree wants them; a file's key is its TOC path."""
    for e in toc.entries:
        if e.type is EntryType.CHUNK:
            continue
        yield _entry(e)


def _entry(e: TocEntry) -> Entry:
    return Entry(
        name=e.name,
        type=str(e.type),
        mode=e.mode,
        uid=e.uid,
        gid=e.gid,
        size=e.size,
        mtime_ns=_mtime_ns(e.modtime),
        link_name=e.link_name,
        dev_major=e.dev_major,
        dev_minor=e.dev_minor,
        xattrs={k.encode(): v for k, v in e.xattrs.items()},
        key=e.name,
    )


class EstargzLayers:
    """``RemoteLayers`` for the daemon: resolve over the network, attach to the FUSE mount."""

    def __init__(
        self,
        root: Path,
        session: FuseSession,
        pool: ChunkPool,
        locator: LayerLocator,
        background_fetch: bool = True,
    ) -> None:
        self._dir = root / "layers"
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._session = session
        self._pool = pool
        self._locator = locator
        self._background_fetch = background_fetch
        self._tasks: dict[int, trio.CancelScope] = {}
        self._opened: OrderedDict[tuple[str, str], tuple[Toc, RecordedRanges]] = OrderedDict()
        self.readers: dict[int, LayerReader] = {}

    def path(self, snapshot_id: int) -> Path:
        return self._session.mountpoint / str(snapshot_id)

    def resolve(self, request: LayerRequest) -> ResolvedEstargz:
        return self._session.call(self._resolve, request)

    async def _resolve(self, request: LayerRequest) -> ResolvedEstargz:
        try:
            with on_behalf_of(layer=request.layer_digest, image=request.reference):
                toc_digest, size = await self._locator.locate(request)
                if not toc_digest:
                    raise NotLazyError(
                        "no-toc-digest",
                        "the manifest has no containerd.io/snapshot/stargz/toc.digest annotation:"
                        " the layer is not eStargz, or its TOC cannot be verified",
                    )
                known = self._opened.get((request.layer_digest, toc_digest))
                if known is not None:
                    # The same blob under another parent (a 2DFS update, a shared base):
                    # its verified TOC is reused, nothing is fetched.
                    self._opened.move_to_end((request.layer_digest, toc_digest))
                    return ResolvedEstargz(request, known[0], toc_digest, size, known[1])
                recorded = RecordedRanges()
                source = recorded.recording(self._locator.source(request, size))
                toc = await open_blob_async(source.read_range, size, expected_toc_digest=toc_digest)
        except TocDigestMismatchError as exc:
            metrics.VERIFICATION_FAILURES.labels("toc").inc()
            log.error(
                "TOC verification failed",
                layer=request.layer_digest,
                image=request.reference,
                reason=exc,
            )
            raise NotLazyError("toc-mismatch", str(exc)) from exc
        except FormatError as exc:
            raise NotLazyError("not-seekable", str(exc)) from exc
        except UnavailableError as exc:
            raise NotLazyError("unreachable", str(exc)) from exc
        self._opened[(request.layer_digest, toc_digest)] = (toc, recorded)
        if len(self._opened) > OPENED_TOCS:
            self._opened.popitem(last=False)
        fetched = sum(len(data) for data in recorded.ranges.values())
        return ResolvedEstargz(request, toc, toc_digest, size, recorded, fetched)

    def attach(self, snapshot_id: int, layer: ResolvedEstargz) -> None:
        self._save(snapshot_id, layer)
        self._session.call_sync(self._attach, snapshot_id, layer, layer.fetched)
        metrics.LAZY_LAYERS.inc()

    def _attach(self, snapshot_id: int, layer: ResolvedEstargz, fetched: int = 0) -> None:
        """``fetched``: bytes that resolving took from the registry (footer and TOC), counted
        as the layer's; a restored layer took them from disk."""
        tree = LayerTree(snapshot_id, tree_entries(layer.toc))
        source = self._locator.source(layer.request, layer.size)
        reader = LayerReader(
            layer.request.layer_digest,
            layer.request.reference,
            layer.toc,
            source,
            self._pool,
            layer.size,
            spawn=self._session.spawn,
        )
        reader.count_fetched(fetched, background=False)
        self._session.filesystem.add_layer(str(snapshot_id), tree, reader)
        self.readers[snapshot_id] = reader
        if self._background_fetch:
            self._tasks[snapshot_id] = self._session.spawn(
                f"fetch {layer.request.layer_digest}", reader.fetch_all
            )

    def _save(self, snapshot_id: int, layer: ResolvedEstargz) -> None:
        target = self._dir / str(snapshot_id)
        staging = self._dir / f".{snapshot_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for offset, data in layer.recorded.ranges.items():
            (staging / f"{offset}.bin").write_bytes(data)
        meta = {"toc_digest": layer.toc_digest, "size": layer.size}
        (staging / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)

    def restore(self, snapshot_id: int, request: LayerRequest) -> None:
        saved = self._dir / str(snapshot_id)
        try:
            meta = json.loads((saved / "meta.json").read_text())
            recorded = RecordedRanges({int(p.stem): p.read_bytes() for p in saved.glob("*.bin")})
            toc = self._session.call(
                self._reopen, recorded, int(meta["size"]), str(meta["toc_digest"])
            )
        except (OSError, ValueError, KeyError, Lazy2dfsError) as exc:
            log.error(
                "remote layer not restored",
                id=snapshot_id,
                layer=request.layer_digest,
                error=exc,
                action="remove the image and pull it again",
            )
            return
        layer = ResolvedEstargz(request, toc, meta["toc_digest"], int(meta["size"]), recorded)
        self._session.call_sync(self._attach, snapshot_id, layer)

    @staticmethod
    async def _reopen(recorded: RecordedRanges, size: int, toc_digest: str) -> Toc:
        return await open_blob_async(recorded.read_range, size, expected_toc_digest=toc_digest)

    def detach(self, snapshot_id: int) -> None:
        self._session.call_sync(self._detach, snapshot_id)
        shutil.rmtree(self._dir / str(snapshot_id), ignore_errors=True)

    def _detach(self, snapshot_id: int) -> None:
        scope = self._tasks.pop(snapshot_id, None)
        if scope is not None:
            scope.cancel()
        self.readers.pop(snapshot_id, None)
        self._session.filesystem.remove_layer(str(snapshot_id))
