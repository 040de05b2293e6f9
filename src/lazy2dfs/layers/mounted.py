"""Remote layers in eStargz (or zstd:chunked): resolved, attached to the FUSE mount, fetched
in the background, verified, and finally served from a local tree.

Resolving a layer reads its footer and TOC — two range requests — and verifies the TOC against
the digest the image's manifest vouches for. A layer without such a digest, or that is not
seekable, is refused with ``NotLazyError`` and containerd downloads it instead. The footer and
TOC bytes are kept under ``<root>/layers/<id>/`` (``layers.saved``), so a restarted daemon
shows the same tree without the network; the blob's cache (``cache``) keeps what was fetched.

The life of a layer: attached (FUSE directory, reads fetch what they need, the background
fetch takes the rest in load order) → complete (every segment cached) → verified (its tar
stream hashes to the diff ID its image's config gives, ``layers.verify``) → local (its tree is
a real directory, ``layers.localtree``, and new mounts use it instead of FUSE). Containers that
mounted the FUSE directory keep reading through it, from the same cached bytes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio

from lazy2dfs import metrics
from lazy2dfs.cache.layer import LayerCache
from lazy2dfs.errors import (
    FailedPreconditionError,
    IntegrityError,
    Lazy2dfsError,
    UnavailableError,
)
from lazy2dfs.estargz.blob import open_blob, open_blob_async
from lazy2dfs.estargz.errors import FormatError, TocDigestMismatchError, TocError
from lazy2dfs.estargz.layout import BlobLayout
from lazy2dfs.estargz.toc import EntryType, Toc, TocEntry
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.fuse.tree import Entry, LayerTree
from lazy2dfs.layers import localtree, saved, verify
from lazy2dfs.layers.locator import LayerLocator, Located
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.retry import on_behalf_of
from lazy2dfs.remote.fetch import FetchContext, LayerStats, SegmentFetcher, at_low_priority
from lazy2dfs.remote.prefetch import fetch_layer
from lazy2dfs.remote.reader import LayerReader
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import (
    NOT_LAZY_FORMAT,
    NotLazyError,
    OnCancel,
    ResolveCancelledError,
)
from lazy2dfs.snapshotter.snapshot import Usage

log = get_logger(__name__)

TREE = "tree"  # a verified blob's local tree, in its cache directory
# TOCs opened ahead of their Prepares: at most this many layers of an image, this many at once.
MAX_AHEAD = 256
AHEAD_AT_ONCE = 4
# A mounted layer's background fetch starts at the first read of any layer of its image (a
# container runs on it), or this long after the mount: started at once, it took the CPU (the
# FUSE loop's HTTP, the GIL) that the rest of the pull and the container's start needed, on 2
# cores: a 256 MiB model's first tensor 1.06-1.37 s after the pull began, 0.71-0.81 s without
# it. An image pulled ahead of use is still fetched whole. Fetching at the mount only the
# segment that starts each layer's first safetensors file (the header a model server reads
# first) did not pay either: cold 1 GiB, runs taking turns, first tensor 1.17 s against 1.21
# and ready 7.38 against 7.06 (gzip, 18 pairs), 0.98 against 1.06 and 5.06 against 4.80 (zstd
# through CRI, 10 pairs).
BACKGROUND_GRACE = 2.0
# A complete layer is hashed for its diff ID and made durable once no fetch has been under way
# on the node for this long (a model's load is over), or at most this long after it completed
# (``remote.flight.FetchActivity`` says why and what it saved), and at most half of what is
# left of ``fetch.verify_deadline_seconds``.
VERIFY_WHEN_QUIET = 1.0
VERIFY_WAIT_AT_MOST = 30.0
DIFF_ID = "diff-id"  # written once the tree is complete and the diff ID checked


@dataclass
class ResolvedEstargz:
    request: LayerRequest
    toc: Toc
    layout: BlobLayout
    layer: saved.SavedLayer
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


@dataclass(frozen=True)
class ResolveLimits:
    """How long opening a layer may take, how many at once per registry host, and how long a
    layer may be served before all of it is verified (``[fetch]`` in the configuration)."""

    deadline: float = 30.0
    per_registry: int = 8
    queue_seconds: float = 5.0  # waiting for a registry's turn, before downloading instead
    verify_deadline: float = 1800.0


@dataclass
class _Attached:
    """One snapshot's layer: its FUSE tree and reader, and the blob's cache."""

    layer: ResolvedEstargz
    tree: LayerTree
    reader: LayerReader
    cache: LayerCache
    local: Path | None = None  # the verified local tree, once there is one
    refused: str = ""  # why the layer is not served: it is not what its image says


@dataclass
class _OpenedToc:
    """A verified TOC in memory, with the snapshots that use it."""

    toc: Toc
    layout: BlobLayout
    layer: saved.SavedLayer
    users: int = 0
    fetched: int = 0  # bytes opening it took that no snapshot's stats count yet

    @property
    def entries(self) -> int:
        return len(self.toc.entries)


class EstargzLayers:
    """``RemoteLayers`` for the daemon: resolve over the network, attach to the FUSE mount.

    Parsed TOCs cost about 2 KB per entry (TOC, layout and FUSE tree; 200,000 entries are
    ~360 MiB), so the entries held in memory over all layers are bounded by
    ``max_toc_entries``: a TOC no snapshot uses goes first, least recently used, and a layer
    that does not fit is downloaded instead (``toc-budget``) rather than take the daemon's
    memory. TOCs are parsed and trees built off the FUSE loop: a large one must not stall other
    tenants' lookups and reads."""

    def __init__(
        self,
        root: Path,
        session: FuseSession,
        context: FetchContext,
        locator: LayerLocator,
        background_fetch: bool = True,
        max_toc_entries: int = 1 << 20,
        limits: ResolveLimits | None = None,
    ) -> None:
        self._dir = root / "layers"
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        self._session = session
        self._context = context
        self._locator = locator
        self._background_fetch = background_fetch
        self._max_toc_entries = max_toc_entries
        self._limits = limits or ResolveLimits()
        self._per_registry: dict[str, trio.CapacityLimiter] = {}
        self._tasks: dict[int, trio.CancelScope] = {}
        self._opened: OrderedDict[tuple[str, str], _OpenedToc] = OrderedDict()
        self._opening: dict[tuple[str, str], trio.Event] = {}
        self._attached: dict[int, _Attached] = {}

    @property
    def readers(self) -> dict[int, LayerReader]:
        """Mounted layers' readers by snapshot id (for metrics and status)."""
        return {i: a.reader for i, a in tuple(self._attached.items())}

    def state(self, snapshot_id: int) -> tuple[str, float]:
        """A mounted layer's state and the share of its file bytes on disk, whenever fetched
        (so a restart does not look like an empty cache): ``verified`` (served from its local
        tree), ``complete``, ``refused``, ``fetching`` (in the background) or ``lazy``."""
        attached = self._attached.get(snapshot_id)
        if attached is None:
            return "detached", 0.0
        cache = attached.cache
        segments = cache.layout.segments
        total = sum(s.payload_size for s in segments)
        share = sum(s.payload_size for s in segments if cache.present(s)) / total if total else 1.0
        if attached.refused:
            return "refused", share
        if attached.local is not None:
            return "verified", 1.0
        if cache.complete:
            return "complete", 1.0
        return ("fetching" if self._background_fetch else "lazy"), share

    def path(self, snapshot_id: int) -> Path:
        """Where a snapshot's files are: its verified local tree, or its FUSE directory."""
        attached = self._attached.get(snapshot_id)
        if attached is not None and attached.refused:
            request = attached.layer.request
            raise FailedPreconditionError(
                f"layer {request.layer_digest} of {request.reference} is refused:"
                f" {attached.refused}; remove the image"
            )
        if attached is not None and attached.local is not None:
            return attached.local
        return self._session.mountpoint / str(snapshot_id)

    def verified(self, snapshot_id: int) -> bool:
        attached = self._attached.get(snapshot_id)
        return attached is not None and attached.local is not None and not attached.refused

    def resolve(self, request: LayerRequest, on_cancel: OnCancel | None = None) -> ResolvedEstargz:
        return self._session.call(self._bounded_resolve, request, on_cancel)

    async def _bounded_resolve(
        self, request: LayerRequest, on_cancel: OnCancel | None
    ) -> ResolvedEstargz:
        """``_resolve`` within the deadline, a few at a time per registry, and cancelled with
        the RPC that asked for it."""
        limits = self._limits
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as rpc:
            if on_cancel is not None:
                on_cancel(functools.partial(_cancel_from_thread, token, rpc))
            with trio.move_on_after(limits.deadline) as timer:
                host = request.reference.split("/", 1)[0]
                limiter = self._per_registry.setdefault(
                    host, trio.CapacityLimiter(limits.per_registry)
                )
                with trio.move_on_after(limits.queue_seconds) as queue:
                    await limiter.acquire()
                if queue.cancelled_caught:
                    raise NotLazyError(
                        "registry-busy",
                        f"{limits.per_registry} layers are being opened from {host} already"
                        " (fetch.resolves_per_registry)",
                    )
                try:
                    return await self._resolve(request)
                finally:
                    limiter.release()
            if timer.cancelled_caught:
                raise NotLazyError(
                    "unreachable",
                    f"opening the layer took longer than {limits.deadline:g}s"
                    " (fetch.resolve_deadline_seconds)",
                )
        raise ResolveCancelledError(f"containerd cancelled the Prepare of {request.chain_id}")

    async def _resolve(self, request: LayerRequest) -> ResolvedEstargz:
        try:
            with on_behalf_of(layer=request.layer_digest, image=request.reference):
                located = await self._locator.locate(request)
                self._start_ahead(located.later)
                opened = await self._open(request, located)
        except TocDigestMismatchError as exc:
            metrics.VERIFICATION_FAILURES.labels("toc").inc()
            log.error(
                "TOC verification failed",
                layer=request.layer_digest,
                image=request.reference,
                reason=exc,
            )
            raise NotLazyError("toc-mismatch", str(exc)) from exc
        except TocError as exc:
            raise NotLazyError("bad-toc", f"the layer's TOC is refused: {exc}") from exc
        except FormatError as exc:
            raise NotLazyError("not-seekable", str(exc)) from exc
        except UnavailableError as exc:
            raise NotLazyError("unreachable", str(exc)) from exc
        # The same blob under another parent (a 2DFS update, a shared base) reuses the TOC;
        # the bytes opening it took are counted once, by the first snapshot.
        fetched, opened.fetched = opened.fetched, 0
        layer = saved.SavedLayer(
            located.toc_digest, located.size, located.diff_id, opened.layer.recorded
        )
        return ResolvedEstargz(request, opened.toc, opened.layout, layer, fetched)

    async def _open(self, request: LayerRequest, located: Located) -> _OpenedToc:
        """The layer's verified TOC: in memory already (opened for another snapshot, or ahead
        of this one's Prepare), being opened (then waited for), or fetched now."""
        if not located.toc_digest:
            raise NotLazyError(
                NOT_LAZY_FORMAT,
                "the manifest has no containerd.io/snapshot/stargz/toc.digest annotation:"
                " the layer is not eStargz or zstd:chunked (lazy2dfs convert makes it so)",
            )
        key = (request.layer_digest, located.toc_digest)
        while (opening := self._opening.get(key)) is not None:
            await opening.wait()
        known = self._opened.get(key)
        if known is not None:
            self._opened.move_to_end(key)
            return known
        done = self._opening[key] = trio.Event()
        try:
            recorded = saved.RecordedRanges()
            source = recorded.recording(self._locator.source(request, located.size))
            toc = await open_blob_async(
                source.read_range,
                located.size,
                expected_toc_digest=located.toc_digest,
                offload=trio.to_thread.run_sync,
            )
            self._make_room(len(toc.entries), request)
            layout = await trio.to_thread.run_sync(BlobLayout, toc)
            layer = saved.SavedLayer(located.toc_digest, located.size, located.diff_id, recorded)
            opened = self._opened[key] = _OpenedToc(toc, layout, layer, fetched=recorded.fetched)
            return opened
        finally:
            del self._opening[key]
            done.set()

    def open_ahead(self, requests: Sequence[LayerRequest]) -> None:
        """Starts opening the TOCs of layers about to be prepared (from any thread but the
        FUSE loop's), ``AHEAD_AT_ONCE`` at a time: containerd prepares an image's layers one
        after another, and each Prepare then finds its TOC open, or being opened. Whatever
        fails is left for the layer's own Prepare to meet and report."""
        self._session.call_sync(self._start_ahead, requests)

    def _start_ahead(self, requests: Sequence[LayerRequest]) -> None:
        """From the loop: ``open_ahead``, or the later layers a Prepare's manifest named."""
        known = self._opened.keys() | self._opening.keys()
        unopened = [r for r in requests[:MAX_AHEAD] if (r.layer_digest, r.toc_digest) not in known]
        if unopened:
            self._session.spawn("open TOCs ahead", functools.partial(self._open_ahead, unopened))

    async def _open_ahead(self, requests: list[LayerRequest]) -> None:
        limiter = trio.CapacityLimiter(AHEAD_AT_ONCE)

        async def one(request: LayerRequest) -> None:
            async with limiter:
                with trio.move_on_after(self._limits.deadline):
                    try:
                        with on_behalf_of(layer=request.layer_digest, image=request.reference):
                            await self._open(request, await self._locator.locate(request))
                    except (Lazy2dfsError, TocError, FormatError) as exc:
                        log.debug("TOC not opened ahead", layer=request.layer_digest, reason=exc)

        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(one, request)

    def _make_room(self, entries: int, request: LayerRequest) -> None:
        """Drops unused TOCs until ``entries`` more fit in ``max_toc_entries``."""
        held = sum(o.entries for o in self._opened.values())
        for key in [k for k, o in self._opened.items() if o.users == 0]:
            if held + entries <= self._max_toc_entries:
                return
            held -= self._opened.pop(key).entries
        if held + entries > self._max_toc_entries:
            raise NotLazyError(
                "toc-budget",
                f"its TOC has {entries} entries and layers in use hold {held} of the"
                f" {self._max_toc_entries} allowed in memory (fetch.max_toc_entries)",
            )

    def attach(self, snapshot_id: int, layer: ResolvedEstargz) -> None:
        """Saves the layer's TOC, builds its tree (here, off the FUSE loop), attaches it."""
        saved.save(self._dir / str(snapshot_id), layer.layer)
        tree = LayerTree(snapshot_id, tree_entries(layer.toc))
        cache = self._context.store.open(layer.request.layer_digest, layer.layout)
        self._session.call_sync(self._attach, snapshot_id, layer, tree, cache, layer.fetched)
        metrics.LAZY_LAYERS.inc()

    def _attach(
        self,
        snapshot_id: int,
        layer: ResolvedEstargz,
        tree: LayerTree,
        cache: LayerCache,
        fetched: int = 0,
    ) -> None:
        """``fetched``: bytes that resolving took from the registry (footer and TOC), counted
        as the layer's; a restored layer took them from disk."""
        request = layer.request
        opened = self._opened.setdefault(
            (request.layer_digest, layer.layer.toc_digest),
            _OpenedToc(layer.toc, layer.layout, layer.layer),
        )
        opened.users += 1
        source = self._locator.source(request, layer.layer.size)
        stats = LayerStats(size=layer.layer.size)
        fetcher = SegmentFetcher(
            self._context,
            request.layer_digest,
            request.reference,
            source,
            cache,
            stats,
            on_verified=self._session.page_cache_fill(tree),
        )
        fetcher.count_fetched(fetched, background=False)
        image_read = next(
            (
                a.reader.read_once
                for a in self._attached.values()
                if a.layer.request.reference == request.reference
            ),
            trio.Event(),
        )
        reader = LayerReader(fetcher, spawn=self._session.spawn, read_once=image_read)
        self._session.filesystem.add_layer(str(snapshot_id), tree, reader)
        attached = _Attached(layer, tree, reader, cache)
        self._attached[snapshot_id] = attached
        local = cache.directory / TREE
        if _recorded_diff_id(cache) == layer.layer.diff_id != "" and local.is_dir():
            attached.local = local
        elif self._background_fetch:
            self._tasks[snapshot_id] = self._session.spawn(
                f"fetch {request.layer_digest}",
                functools.partial(self._complete, snapshot_id, attached, fetcher),
            )

    async def _complete(
        self, snapshot_id: int, attached: _Attached, fetcher: SegmentFetcher
    ) -> None:
        """Fetches the rest of the layer, verifies it, and writes its local tree; from the
        first read of its image, or ``BACKGROUND_GRACE`` after it was mounted."""
        request = attached.layer.request
        cache = attached.cache
        expected = attached.layer.layer.diff_id
        with trio.move_on_after(BACKGROUND_GRACE):
            await attached.reader.read_once.wait()
        with trio.move_on_after(self._limits.verify_deadline) as late:
            known = await self._diff_id(snapshot_id, attached, fetcher)
            if known and expected and known != expected and cache.drop_assumptions():
                # Chunks copied from another blob were hashed with their gaps assumed empty:
                # learn every one from the registry before judging the layer.
                _forget_diff_id(cache)
                known = await self._diff_id(snapshot_id, attached, fetcher)
        if late.cancelled_caught:
            self._refuse(
                snapshot_id,
                attached,
                f"not fetched and verified within {self._limits.verify_deadline:g}s"
                " (fetch.verify_deadline_seconds)",
            )
            return
        if known is None:
            return  # not complete (the cache is full), or refused already
        if expected and known != expected:
            self._refuse(snapshot_id, attached, f"its tar hashes to {known}, not {expected}")
            return
        local = cache.directory / TREE
        if not local.is_dir():
            backing = functools.partial(_backing, cache)
            await trio.to_thread.run_sync(localtree.write_tree, attached.tree, backing, local)
        log.info(
            "layer verified",
            layer=request.layer_digest,
            image=request.reference,
            diff_id=known,
            local=local,
            bytes=fetcher.stats.fetched,
        )
        if expected:
            attached.local = local

    async def _diff_id(
        self, snapshot_id: int, attached: _Attached, fetcher: SegmentFetcher
    ) -> str | None:
        """The layer's diff ID once every segment is cached (recorded, so a restart does not
        hash it again); None if it cannot be had or the layer was refused."""
        await fetch_layer(fetcher)
        cache = attached.cache
        if not cache.complete:
            return None
        fetcher.source.release()  # every byte is cached: a whole blob kept for it may go
        known = _recorded_diff_id(cache)
        if known is not None:
            return known
        await fetcher.context.activity.wait_quiet(VERIFY_WHEN_QUIET, VERIFY_WAIT_AT_MOST)
        tail = await self._tail(attached, fetcher)
        try:
            known = await trio.to_thread.run_sync(at_low_priority(verify.diff_id), cache, tail)
        except Lazy2dfsError as exc:
            self._refuse(snapshot_id, attached, f"its tar stream is not its TOC: {exc}")
            return None
        # Recorded once every segment's record is durable: a crash never leaves a diff ID
        # that vouches for bytes the disk lost.
        await trio.to_thread.run_sync(cache.flush)
        _record_diff_id(cache, known)
        await trio.to_thread.run_sync(cache.drop_pages)
        return known

    @staticmethod
    async def _tail(attached: _Attached, fetcher: SegmentFetcher) -> bytes:
        """The blob from its payloads' end (the TOC, the footer): recorded when it was opened,
        or, for what opening did not read (a footer frame's header), from the registry."""
        start, end = attached.layer.toc.payload_end, attached.layer.layer.size
        try:
            return attached.layer.layer.recorded.span(start, end)
        except IntegrityError:
            data = await fetcher.source.read_range(start, end - start)
            fetcher.count_fetched(len(data), background=True)
            return data

    def _refuse(self, snapshot_id: int, attached: _Attached, why: str) -> None:
        """Quarantines the layer: reads fail, no new container mounts it."""
        request = attached.layer.request
        attached.refused = why
        attached.reader.refuse(why)
        self._session.drop_page_cache(attached.tree)
        metrics.VERIFICATION_FAILURES.labels("diff_id").inc()
        log.error(
            "layer is not what its image says",
            layer=request.layer_digest,
            image=request.reference,
            snapshot=request.chain_id,
            id=snapshot_id,
            reason=why,
            action="remove the image; its layer is not served",
        )

    def restore(self, snapshot_id: int, request: LayerRequest) -> None:
        """Attaches a layer recorded before a restart, from what was saved (no network); what
        a crash or a bad disk lost is fetched again from the registry."""
        try:
            layer = saved.load(self._dir / str(snapshot_id))
            toc = open_blob(layer.recorded.read, layer.size, expected_toc_digest=layer.toc_digest)
        except (OSError, ValueError, KeyError, Lazy2dfsError) as exc:
            log.warning(
                "saved TOC unusable, fetching it again",
                id=snapshot_id,
                layer=request.layer_digest,
                error=exc,
            )
            try:
                self.attach(snapshot_id, self.resolve(request))
            except Lazy2dfsError as again:
                log.error(
                    "remote layer not restored",
                    id=snapshot_id,
                    layer=request.layer_digest,
                    error=again,
                    action="remove the image and pull it again",
                )
            return
        resolved = ResolvedEstargz(request, toc, BlobLayout(toc), layer)
        tree = LayerTree(snapshot_id, tree_entries(toc))
        cache = self._context.store.open(request.layer_digest, resolved.layout)
        self._session.call_sync(self._attach, snapshot_id, resolved, tree, cache)

    def detach(self, snapshot_id: int) -> None:
        self._session.call_sync(self._detach, snapshot_id)
        shutil.rmtree(self._dir / str(snapshot_id), ignore_errors=True)

    def prune(self, keep: set[int]) -> None:
        for directory in self._dir.iterdir():
            if not directory.name.isdigit() or int(directory.name) not in keep:
                shutil.rmtree(directory, ignore_errors=True)

    def _detach(self, snapshot_id: int) -> None:
        scope = self._tasks.pop(snapshot_id, None)
        if scope is not None:
            scope.cancel()
        attached = self._attached.pop(snapshot_id, None)
        self._session.filesystem.remove_layer(str(snapshot_id))
        if attached is not None:
            self._context.store.release(attached.cache)
            layer = attached.layer
            opened = self._opened.get((layer.request.layer_digest, layer.layer.toc_digest))
            if opened is not None:
                opened.users -= 1


def _backing(cache: LayerCache, key: str) -> Path | None:
    file = cache.layout.file(key)
    return None if file is None else cache.backing_path(file)


def _recorded_diff_id(cache: LayerCache) -> str | None:
    try:
        return (cache.directory / DIFF_ID).read_text().strip() or None
    except FileNotFoundError:
        return None


def _forget_diff_id(cache: LayerCache) -> None:
    (cache.directory / DIFF_ID).unlink(missing_ok=True)


def _record_diff_id(cache: LayerCache, value: str) -> None:
    path = cache.directory / DIFF_ID
    staging = path.with_name(f".{DIFF_ID}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, value.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(staging, path)


def _cancel_from_thread(token: trio.lowlevel.TrioToken, scope: trio.CancelScope) -> None:
    """Runs in gRPC's thread when the RPC ends (a no-op if the resolve finished)."""
    with contextlib.suppress(trio.RunFinishedError):
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
