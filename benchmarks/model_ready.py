"""Model ready: how long a new container takes to have every tensor of a model in memory, and
what that costs the node — overlayfs against lazy2dfs (and upstream stargz), side by side in
one run, as ratios against overlayfs (issue 13).

Formats. Every image holds busybox in one layer and each of the model's 4 safetensors shards
in a layer of its own:

* ``overlayfs``: plain tar.gz layers, ``ctr images pull`` onto containerd's overlayfs;
* ``gzip``: lazy2dfs on gzip eStargz (lazy2dfs's writer, 4 MiB chunks), ``lazy2dfs pull``;
* ``zstd``: lazy2dfs on zstd:chunked, its own format (same writer and chunks);
* ``zstd-cri``: the same image pulled as kubelet pulls it (CRI ``PullImage``, image labels
  passed to the snapshotter), containers in namespace ``k8s.io``;
* ``stargz``: upstream's stargz snapshotter 0.12 (``devstack.stargz``, Debian's sources,
  upstream's default settings) on the same gzip eStargz image, ``ctr-remote image rpull``.

Models are F16 safetensors (``devstack.model``: normal weights, gzip keeps 92 %) of 256 MiB,
1 GiB and 4 GiB in 128 tensors, data in name order as safetensors writes it; links are
loopback and 1 Gbit/s with 20 ms round trips (``devstack.link``).

A run is one fresh stack (``benchmarks.coldstack``: new containerd and daemons, nothing
cached) and two phases:

* cold: page cache dropped; the pull, then N containers at once, each loading every tensor
  with ``safetensors.safe_open`` (``benchmarks.model_load``). Then the run waits until the
  node holds the whole image (lazy2dfs: every layer verified, its local tree written;
  stargz: the registry idle for 2 s).
* warm: page cache dropped again; N new containers load the model from what the node has
  (again, up to 3 times, while another process's page cache drop spoils the phase: the
  machine is shared).

Per phase: model ready (phase start to the last container's last tensor) and first tensor;
daemon CPU seconds per GiB of model (utime + stime from /proc: the lazy2dfs daemon and its
FUSE keeper; the stargz daemon; for overlayfs, containerd and the ``ctr`` pull, which fetch
and unpack); the daemon's peak RSS (VmHWM); the page cache holding the stack's files
(``cachestat`` per file, FUSE mounts included, each inode once: what N containers of one model
cost the node's memory); and how many of the container's overlay lower directories were FUSE
directories. Bytes fetched ÷ bytes needed: what the registry's access log says it served by
the time the node holds the whole image, over the image's manifest, config and layers.

Trials alternate formats (trial 1 of each, then trial 2 ...) so the machine's noise falls on
all of them. N = 1 runs ``trials`` times (3 below 4 GiB, 1 at 4 GiB); N > 1 once.

``python -m benchmarks.model_ready --help`` runs part of the matrix (one cell in a minute)
and can profile the lazy2dfs daemon with py-spy during each phase (``--profile DIR``).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import daemon_profile, model_ready_report, report
from benchmarks.coldstack import (
    EMULATED,
    LOOPBACK,
    ColdStack,
    cold_stack,
    daemon_usage,
    drop_page_cache,
    page_cache_drops,
    registry_host,
)
from benchmarks.coldstart import CRI, pull
from benchmarks.model_load import Loaded, LoadFailed, load_model, lowers_under, page_cache_bytes
from benchmarks.model_ready_report import COLD, WARM
from devstack.containerd import CRI_NAMESPACE
from devstack.images import FIXED_MTIME, BuiltImage, build_image, build_layer
from devstack.model import SampleModel, f16_like, runtime_tree, sample_model
from devstack.registry import LocalRegistry, Served
from devstack.snapshotter import keeper_pids
from devstack.stargz import build_stargz_daemon
from lazy2dfs.estargz import Compression, WriterOptions

LINKS = {"loopback": LOOPBACK, "1gbit": EMULATED}
MIB = 1 << 20
CHUNK = 4 * MIB
# The whole image is on the node once every layer is verified (lazy2dfs) or the registry has
# been idle this long (stargz, whose background fetch says nothing).
QUIET_SECONDS = 2.0
# Snapshotters whose background fetch says nothing: the node holds what it will once the
# registry is quiet (SOCI's background fetch waits 30 s of quiet first, then fetches slowly:
# after a load of every tensor, what the model needs is on the node).
QUIET_WHEN_WHOLE = ("stargz", "soci")
COMPLETE_TIMEOUT = 1800.0
# The daemon's log (logfmt) says when a layer is verified, or why it is not.
VERIFIED = re.compile(r'event="layer verified" layer=(sha256:[0-9a-f]+)')
FAILED = re.compile(
    r'event="(?:background task failed" task="fetch |layer is not what its image says" layer=)'
    r"(sha256:[0-9a-f]+)"
)
PULL_TIMEOUT = 3600.0
WARM_LOADS = 3
WARM_ATTEMPTS = 3
# Images kept with --registry-dir are reused while this matches; change it when the model or
# the writer changes.
IMAGE_VERSION = "f16-normal, 4 shards, 128 tensors, 4 MiB chunks, v2"
# Tensors in the model: 8 MiB each at 1 GiB (a 0.5B-parameter model has about 300, of 1 to 270
# MiB), so the first tensor is not an eighth of the model.
TENSORS = 128


@dataclass(frozen=True)
class Format:
    label: str
    snapshotter: str
    image: str  # the tag of the image it pulls
    cri: bool = False  # pulled by CRI's PullImage (kubelet's path) into namespace k8s.io

    @property
    def namespace(self) -> str:
        return CRI_NAMESPACE if self.cri else "default"


FORMATS = {
    "overlayfs": Format("overlayfs", "overlayfs", "tar-gz"),
    "gzip": Format("lazy2dfs, gzip eStargz", "lazy2dfs", "estargz"),
    "zstd": Format("lazy2dfs, zstd:chunked", "lazy2dfs", "zstd-chunked"),
    # kubelet's path: containerd pulls (CRI passes the image labels), no Python process starts.
    "zstd-cri": Format("lazy2dfs, zstd:chunked, CRI pull", "lazy2dfs", "zstd-chunked", cri=True),
    "stargz": Format("stargz 0.12, gzip eStargz", "stargz", "estargz"),
}
WRITERS: dict[str, WriterOptions | None] = {
    "tar-gz": None,
    "estargz": WriterOptions(chunk_size=CHUNK, mtime=FIXED_MTIME),
    "zstd-chunked": WriterOptions(
        chunk_size=CHUNK, compression=Compression.ZSTD, mtime=FIXED_MTIME
    ),
}


@dataclass(frozen=True)
class Plan:
    """What to run. N > 1 containers run once per size, format and link in ``shared_links``."""

    sizes: tuple[int, ...] = (256, 1024, 4096)
    links: tuple[str, ...] = (LOOPBACK, EMULATED)
    formats: tuple[str, ...] = tuple(FORMATS)
    trials: int | None = None  # None: 3 below 4 GiB (a cell under a minute), 1 at 4 GiB
    containers: tuple[int, ...] = (1, 2, 4)
    shared_links: tuple[str, ...] = (LOOPBACK,)
    states: tuple[str, ...] = (COLD, WARM)
    profile: Path | None = None
    profile_format: str = "flamegraph"
    registry_dir: Path | None = None
    out: Path = field(default=report.RESULTS_DIR)

    def trials_for(self, size_mib: int) -> int:
        if self.trials is not None:
            return self.trials
        return 1 if size_mib >= 4096 else 3

    def schedule(self, size_mib: int, link: str) -> list[tuple[int, int]]:
        """(containers, trial) in the order they run."""
        runs = []
        for count in self.containers:
            if count == 1:
                runs += [(1, trial) for trial in range(self.trials_for(size_mib))]
            elif link in self.shared_links:
                runs.append((count, 0))
        return runs


def _repo(size_mib: int) -> str:
    return f"bench/ready-{size_mib}m"


def _build(model: SampleModel, writer: WriterOptions | None) -> BuiltImage:
    # Two shards at a time: zlib, zstd and the eStargz writer's threads let go of the GIL.
    with ThreadPoolExecutor(2) as pool:
        shards = list(
            pool.map(
                lambda path: build_layer({path: model.files[path]}, estargz=writer), model.paths
            )
        )
    return build_image([build_layer(runtime_tree(), estargz=writer), *shards])


def _needed(image: BuiltImage) -> int:
    """Bytes a node needs for the whole image: manifest, config and layers."""
    layers = sum(len(layer.blob.data) for layer in image.layers)
    return len(image.manifest.data) + len(image.config.data) + layers


def _push_images(
    registry: LocalRegistry, size_mib: int, tags: set[str], kept: Path | None
) -> dict[str, dict[str, int]]:
    """The model in each image format asked for, built and pushed unless ``kept`` (the
    registry's storage, kept between runs) has it; per tag, bytes needed and layers."""
    index = kept / "images.json" if kept else None
    known: dict[str, dict[str, int]] = {}
    if index is not None and index.exists():
        saved = json.loads(index.read_text())
        if saved.get("version") == IMAGE_VERSION:
            known = saved["images"]
    missing = sorted(tag for tag in tags if f"{_repo(size_mib)}:{tag}" not in known)
    if missing:
        started = time.monotonic()
        model = sample_model(size_mib, layers=TENSORS, dtype="F16", weights=f16_like)
        for tag in missing:
            image = _build(model, WRITERS[tag])
            registry.push(f"{_repo(size_mib)}:{tag}", image)
            known[f"{_repo(size_mib)}:{tag}"] = {
                "needed": _needed(image),
                "layers": len(image.layers),
            }
        del model
        print(
            f"model_ready: {size_mib} MiB as {', '.join(missing)} built and pushed in"
            f" {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if index is not None:
            index.write_text(json.dumps({"version": IMAGE_VERSION, "images": known}, indent=1))
    return {tag: known[f"{_repo(size_mib)}:{tag}"] for tag in tags}


def _pull(stack: ColdStack, fmt: Format, ref: str) -> float:
    if fmt.cri:
        return pull(stack.containerd, ref, CRI)
    if fmt.snapshotter != "stargz":
        return pull(stack.containerd, ref, fmt.snapshotter)
    argv = ["ctr-remote", "--address", str(stack.containerd.address), "--namespace", "default"]
    argv += ["image", "rpull", "--plain-http", "--snapshotter", "stargz", ref]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=PULL_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def _daemon_pids(stack: ColdStack, fmt: Format) -> dict[str, int]:
    """The processes whose CPU is the snapshotter's work, by role."""
    if fmt.snapshotter == "lazy2dfs":
        assert stack.daemon.process is not None
        pids = {"daemon": stack.daemon.process.pid}
        pids.update({f"keeper {pid}": pid for pid in keeper_pids(stack.daemon.root)})
        return pids
    if fmt.snapshotter == "stargz":
        assert stack.stargz is not None and stack.stargz.process is not None
        return {"daemon": stack.stargz.process.pid}
    if fmt.snapshotter == "soci":
        assert stack.soci is not None and stack.soci.process is not None
        return {"daemon": stack.soci.process.pid}
    assert stack.containerd.process is not None
    return {"containerd": stack.containerd.process.pid}


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {role: daemon_usage(pid)[0] for role, pid in pids.items()}


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _lazy2dfs_layers(log: Path) -> tuple[set[str], set[str]]:
    """Layers the daemon's log says it verified, and layers whose background fetch,
    verification or local tree failed (they stay on FUSE)."""
    text = log.read_text(errors="replace")
    verified = set(VERIFIED.findall(text))
    return verified, set(FAILED.findall(text)) - verified


def _wait_complete(
    stack: ColdStack, fmt: Format, served: Served, layers: int
) -> dict[str, int] | None:
    """Returns once the node holds the whole image, or (lazy2dfs) every layer was verified or
    failed; bounded by ``COMPLETE_TIMEOUT``. For lazy2dfs: how many layers were verified."""
    deadline = time.monotonic() + COMPLETE_TIMEOUT
    if fmt.snapshotter == "lazy2dfs":
        log = stack.daemon.workdir / "lazy2dfs.log"
        while time.monotonic() < deadline:
            verified, failed = _lazy2dfs_layers(log)
            if len(verified) + len(failed) >= layers:
                return {"layers": layers, "verified": len(verified)}
            time.sleep(0.1)
    elif fmt.snapshotter in QUIET_WHEN_WHOLE:
        count = -1
        while time.monotonic() < deadline:
            now = len(served.requests())
            if now == count:
                return None
            count = now
            time.sleep(QUIET_SECONDS)
    else:
        return None
    raise TimeoutError(
        f"{fmt.label}: the image was not whole on the node after {COMPLETE_TIMEOUT:.0f} s"
    )


@dataclass(frozen=True)
class RunSpec:
    size_mib: int
    link: str
    format: str
    containers: int
    trial: int

    @property
    def slug(self) -> str:
        link = next(name for name, label in LINKS.items() if label == self.link)
        return f"{self.size_mib}m-{link}-{self.format}-n{self.containers}-t{self.trial}"


class Phase:
    """Measures one phase (cold or warm) of a run: CPU, bytes served and, at its end, the
    containers' load times, the daemon's peak RSS and the page cache."""

    def __init__(self, stack: ColdStack, fmt: Format, served: Served) -> None:
        self.stack = stack
        self.fmt = fmt
        self.served = served
        self.pids = _daemon_pids(stack, fmt)
        registry = served.registries[0].process
        self.registry_pid = 0 if registry is None else registry.pid
        drop_page_cache()
        self.drops = page_cache_drops()
        self.cpu = _cpu(self.pids)
        self.registry_cpu = daemon_usage(self.registry_pid)[0] if self.registry_pid else 0.0
        self.start = time.time()

    def measures(
        self, model_mib: float, loaded: Sequence[Loaded], pull_cpu: float, pulled: float
    ) -> dict[str, Any]:
        cpu = {role: used - self.cpu[role] for role, used in _cpu(self.pids).items()}
        cpu["pull client"] = pull_cpu
        own = (
            sum(cpu.values())
            if self.fmt.snapshotter == "overlayfs"
            else sum(used for role, used in cpu.items() if role != "pull client")
        )
        fuse = {"lazy2dfs": self.stack.daemon.root / "fuse"}
        if self.stack.stargz is not None:
            fuse["stargz"] = self.stack.stargz.root
        if self.stack.soci is not None:
            fuse["soci"] = self.stack.soci.root
        mount_root = fuse.get(self.fmt.snapshotter)
        main = self.pids.get("daemon", self.pids.get("containerd", 0))
        return {
            "pull_s": pulled,
            "started_s": max(c.started for c in loaded),
            "first_tensor_s": max(c.first_tensor for c in loaded),
            "ready_s": max(c.ready for c in loaded),
            "tensors": loaded[0].tensors,
            "loaded_mib": loaded[0].bytes / MIB,
            "daemon_cpu_s": own,
            "daemon_cpu_s_per_gib": own / (model_mib / 1024),
            "cpu_s": cpu,
            # The rest of what the machine spent on the load: the registry serving it, and one
            # container loading it.
            "registry_cpu_s_per_gib": (
                (daemon_usage(self.registry_pid)[0] - self.registry_cpu) / (model_mib / 1024)
                if self.registry_pid
                else None
            ),
            "loader_cpu_s_per_gib": max(c.cpu for c in loaded) / (model_mib / 1024),
            "daemon_peak_rss_mib": daemon_usage(main)[1],
            "page_cache_mib": self.page_cache_mib(),
            "fetched_mib": self.served.bytes() / MIB,
            "lowers": len(loaded[0].lowers),
            "lowers_on_fuse": lowers_under(loaded, mount_root) if mount_root else 0,
            # Page cache drops by other work on the machine during the phase: its page cache
            # figure is then too low.
            "foreign_drops": page_cache_drops() - self.drops,
        }

    def page_cache_mib(self) -> float:
        """The page cache the stack's files take (content store, snapshots, caches, mounts)."""
        cached = [self.stack.daemon.workdir.parent]
        if self.stack.soci is not None:
            cached.append(self.stack.soci.root)  # its FUSE mounts are there only
        return page_cache_bytes(cached) / MIB


def _profiled(plan: Plan, stack: ColdStack, fmt: Format, name: str) -> AbstractContextManager[Any]:
    if plan.profile is None or fmt.snapshotter != "lazy2dfs":
        return nullcontext()
    assert stack.daemon.process is not None
    return daemon_profile.recorded(
        stack.daemon.process.pid,
        plan.profile / name,
        plan.profile_format,
    )


def _run(
    plan: Plan,
    work: Path,
    registry: LocalRegistry,
    host: str,
    spec: RunSpec,
    image: dict[str, int],
    stargz_binary: Path | None,
) -> dict[str, Any]:
    """One fresh stack: the cold phase (or only the pull, if cold is not asked for), the wait
    for the whole image, and the warm phase."""
    fmt = FORMATS[spec.format]
    ref = f"{host}/{_repo(spec.size_mib)}:{fmt.image}"
    result: dict[str, Any] = {**asdict(spec), "cold": None, "warm": None}
    binary = stargz_binary if fmt.snapshotter == "stargz" else None
    # CRI pulls into lazy2dfs, the stack's default.
    with cold_stack(work, log_level="info", stargz_binary=binary, cri=fmt.cri) as stack:
        served = Served(registry)
        cold = Phase(stack, fmt, served)
        with _profiled(plan, stack, fmt, f"{spec.slug}-cold"):
            before = _children_cpu()
            pulled = _pull(stack, fmt, ref)
            pull_cpu = _children_cpu() - before
            if COLD in plan.states:
                try:
                    loaded = load_model(
                        stack.containerd,
                        ref,
                        fmt.snapshotter,
                        spec.containers,
                        cold.start,
                        fmt.namespace,
                    )
                    result["cold"] = cold.measures(spec.size_mib, loaded, pull_cpu, pulled)
                except LoadFailed as exc:
                    result["cold"] = failed_load(work, spec.slug, COLD, exc)
        verified = _wait_complete(stack, fmt, served, image["layers"])
        whole = sum(_cpu(cold.pids).values()) - sum(cold.cpu.values())
        if fmt.snapshotter == "overlayfs":
            whole += pull_cpu
        result["image"] = {
            "complete_s": time.time() - cold.start,
            "daemon_cpu_s_per_gib_whole": whole / (spec.size_mib / 1024),
            "fetched_total_mib": served.bytes() / MIB,
            "fetched_ratio": served.bytes() / image["needed"],
            "layers_verified": verified,
            # Once the node holds the whole image: lazy2dfs's cache has dropped the copy its
            # backing files kept until then.
            "page_cache_whole_mib": cold.page_cache_mib(),
        }
        if WARM in plan.states:
            result["warm"] = _warm(plan, stack, fmt, spec, ref, registry, work)
    return result


def _warm(
    plan: Plan,
    stack: ColdStack,
    fmt: Format,
    spec: RunSpec,
    ref: str,
    registry: LocalRegistry,
    work: Path,
) -> dict[str, Any]:
    """The warm phase: ``WARM_LOADS`` loads, each in new containers with the page cache
    dropped, and the one of median ready time. A warm 1 GiB load takes about a second, read
    from this VM's disk, whose speed drifts: overlayfs's took 0.82 to 1.15 s within an hour,
    and single loads put lazy2dfs at 0.97x to 1.39x the overlayfs load beside them. A load
    during which other work dropped the page cache is run again (up to ``WARM_ATTEMPTS`` more)."""
    loads: list[dict[str, Any]] = []
    for attempt in range(WARM_LOADS + WARM_ATTEMPTS):
        warm = Phase(stack, fmt, Served(registry))
        try:
            with _profiled(plan, stack, fmt, f"{spec.slug}-warm-{attempt + 1}"):
                loaded = load_model(
                    stack.containerd,
                    ref,
                    fmt.snapshotter,
                    spec.containers,
                    warm.start,
                    fmt.namespace,
                )
        except LoadFailed as exc:
            return failed_load(work, spec.slug, WARM, exc)
        measured = warm.measures(spec.size_mib, loaded, 0.0, 0.0) | {"attempt": attempt + 1}
        if not measured["foreign_drops"] or attempt == WARM_LOADS + WARM_ATTEMPTS - 1:
            loads.append(measured)
        if len(loads) == WARM_LOADS:
            break
    loads.sort(key=lambda load: float(load["ready_s"]))
    return loads[len(loads) // 2] | {"ready_s_loads": [load["ready_s"] for load in loads]}


def failed_load(work: Path, slug: str, state: str, exc: LoadFailed) -> dict[str, Any]:
    """A phase whose load failed: why, and the stack's logs kept where the run's directory
    is not removed."""
    kept = Path(tempfile.gettempdir()) / "model_ready-failures" / f"{slug}-{state}"
    kept.mkdir(parents=True, exist_ok=True)
    for log in (*work.glob("*/*.log"), *work.glob("*/root/*.log")):
        shutil.copy2(log, kept / f"{log.parent.name}-{log.name}")
    print(f"model_ready: {slug} {state} failed: {exc} (logs in {kept})", flush=True)
    return {"failed": str(exc), "logs": str(kept)}


def _summary(result: dict[str, Any]) -> str:
    parts = [f"{result['size_mib']} MiB {result['link']} {result['format']}"]
    parts.append(f"N={result['containers']} trial {result['trial'] + 1}:")
    for state in (COLD, WARM):
        phase = result[state]
        if phase and "failed" in phase:
            parts.append(f"{state} FAILED;")
        elif phase:
            parts.append(
                f"{state} ready {phase['ready_s']:.2f}s first {phase['first_tensor_s']:.2f}s"
                f" cpu {phase['daemon_cpu_s_per_gib']:.2f}s/GiB"
                f" cache {phase['page_cache_mib']:.0f}MiB;"
            )
    parts.append(f"fetched {result['image']['fetched_ratio']:.3f}x")
    return " ".join(parts)


def run_plan(plan: Plan) -> Path:
    raw: dict[str, Any] = {"plan": _plan_json(plan), "images": {}, "runs": []}
    png = plan.out
    with tempfile.TemporaryDirectory(prefix="l2d-ready-") as tmp:
        work = Path(tmp)
        stargz_binary = None
        if any(FORMATS[f].snapshotter == "stargz" for f in plan.formats):
            stargz_binary = build_stargz_daemon(work / "stargz-build")
        storage = plan.registry_dir / "storage" if plan.registry_dir else None
        with LocalRegistry(work / "registry", storage=storage) as registry:
            tags = {FORMATS[f].image for f in plan.formats}
            for size in plan.sizes:
                images = _push_images(registry, size, tags, plan.registry_dir)
                raw["images"][f"{size}"] = images
                try:
                    for link in plan.links:
                        for containers, trial in plan.schedule(size, link):
                            for key in plan.formats:
                                spec = RunSpec(size, link, key, containers, trial)
                                with registry_host(registry, link) as host:
                                    result = _run(
                                        plan,
                                        work / spec.slug,
                                        registry,
                                        host,
                                        spec,
                                        images[FORMATS[key].image],
                                        stargz_binary,
                                    )
                                raw["runs"].append(result)
                                print(f"model_ready: {_summary(result)}", flush=True)
                            # After each round, so that an interrupted run leaves results.
                            png = model_ready_report.write(raw, plan.out)
                finally:
                    if raw["runs"]:
                        png = model_ready_report.write(raw, plan.out)
    return png


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in plan.__dict__.items()
    } | {"formats": {key: FORMATS[key].label for key in plan.formats}}


def run() -> Path:
    """The whole matrix (``make bench``)."""
    return run_plan(Plan())


def _sizes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([MG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a size in MiB, or like 1G or 256M")
    return int(match.group(1)) * (1024 if match.group(2).upper() == "G" else 1)


def parse_plan(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.model_ready",
        description="Model ready (cold and warm) for overlayfs, lazy2dfs and upstream stargz."
        " Without options: the whole matrix, as `make bench` runs it.",
    )
    default = Plan()
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_sizes,
        default=list(default.sizes),
        metavar="SIZE",
        help="model sizes, MiB or like 1G (default: 256 1024 4096)",
    )
    parser.add_argument(
        "--links",
        nargs="+",
        choices=list(LINKS),
        default=list(LINKS),
        help="registry link: loopback, or 1gbit (1 Gbit/s, 20 ms round trip)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=list(FORMATS),
        default=list(default.formats),
        help="overlayfs (plain tar.gz), gzip (lazy2dfs, eStargz), zstd (lazy2dfs,"
        " zstd:chunked), stargz (upstream 0.12, eStargz)",
    )
    parser.add_argument(
        "--trials", type=int, help="runs per cell with 1 container (default: 3; 1 at 4 GiB)"
    )
    parser.add_argument(
        "--containers",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="containers loading at once (default: 1 2 4, more than 1 on loopback only;"
        " given, on every link asked for)",
    )
    parser.add_argument("--cold", action="store_true", help="only the cold phase")
    parser.add_argument(
        "--warm", action="store_true", help="only the warm phase (the cold pull still runs)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the lazy2dfs daemon with py-spy during each phase, into DIR",
    )
    parser.add_argument(
        "--profile-format",
        choices=list(daemon_profile.FORMATS),
        default="flamegraph",
        help="flamegraph (SVG, default), speedscope (https://speedscope.app) or raw",
    )
    parser.add_argument(
        "--registry-dir",
        type=Path,
        metavar="DIR",
        help="keep the built images in DIR and reuse them in later runs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=report.RESULTS_DIR,
        metavar="DIR",
        help=f"where the JSON, Markdown and PNGs go (default: {report.RESULTS_DIR})",
    )
    args = parser.parse_args(argv)
    links = tuple(LINKS[name] for name in args.links)
    states = tuple(s for s, asked in ((COLD, args.cold), (WARM, args.warm)) if asked)
    plan = replace(
        default,
        sizes=tuple(args.sizes),
        links=links,
        formats=tuple(args.formats),
        trials=args.trials,
        states=states or (COLD, WARM),
        profile=args.profile,
        profile_format=args.profile_format,
        registry_dir=args.registry_dir,
        out=args.out,
    )
    if args.containers is not None:
        plan = replace(plan, containers=tuple(args.containers), shared_links=links)
    return plan


def main(argv: Sequence[str] | None = None) -> None:
    print(f"model_ready: {run_plan(parse_plan(argv))}")


if __name__ == "__main__":
    main()
