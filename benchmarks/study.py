"""The study (issue 18): every lazy snapshotter that runs here, side by side on model weights —
how much sooner a model is ready, for which model sizes and 2DFS partitions, against which peer.

Snapshotters, each set up as its own documentation says:

* ``overlayfs``: containerd's own, ``ctr images pull`` of the plain tar.gz image (the stock
  2DFS builder's output);
* ``stargz``: upstream's stargz snapshotter 0.12 (``devstack.stargz``), the image converted by
  its own ``ctr-remote image convert --estargz --oci``, pulled through CRI (snapshotter
  ``stargz``, ``disable_snapshot_annotations = false``);
* ``soci``: the SOCI snapshotter 0.4.1 (``devstack.soci``) on the *unconverted* tar.gz image,
  its index made by ``soci create`` and pushed by ``soci push`` (v1 index; docker-registry has
  no referrers API, so the OCI fallback tag), pulled through CRI the same way;
* ``zstd``: lazy2dfs on zstd:chunked, its default format, ``lazy2dfs pull REF--x1.y1.x2.y2``
  of the 2DFS image ``lazy2dfs build`` made;
* ``gzip``: lazy2dfs on gzip eStargz, the same way.

Models: F16 safetensors in 4 shards of 32 tensors (``devstack.model``, as
``benchmarks.model_ready``), of 256 MiB, 1 GiB and 4 GiB, and the real all-MiniLM-L6-v2
checkpoint (one file: only its 100 % partition). Shard r is row r of the 2DFS field; a
partition of 25, 50 or 100 % of the rows is what lazy2dfs pulls as ``REF--0.0.{r}.0`` and, for
the peers, an image of its own: the base layer and the selected shards as ordinary layers.

A run (one cell's trial) is a fresh node (``benchmarks.coldstack``): cold, the pull then one new
container loading every tensor with safetensors (``benchmarks.model_load``); the check that the
peer stayed lazy (no layer blob of the image in containerd's content store after the pull, else
the run is marked and left out of every comparison); the wait until the node holds what it will
(``benchmarks.model_ready``); warm, a new container after the page cache is dropped; and the
disk the node's directories take. The measures of a phase are ``model_ready.Phase``'s.

Trials of a cell alternate with the other snapshotters' (trial 1 of each, then trial 2 ...).
Every run is written to the results file as it ends, with the time it ended; a rerun with the
same file skips what it holds, so an interrupted study goes on where it stopped, and a model's
cells are measured again by removing its runs from the file. ``python -m benchmarks.study --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import report, study_report
from benchmarks.coldstack import (
    EMULATED,
    LOOPBACK,
    ColdStack,
    cold_stack,
    registry_host,
)
from benchmarks.coldstart import CRI, pull
from benchmarks.model_load import LoadFailed, load_model
from benchmarks.model_ready import (
    CHUNK,
    TENSORS,
    Format,
    Phase,
    _children_cpu,
    _cpu,
    _wait_complete,
    failed_load,
)
from benchmarks.model_ready_report import COLD, WARM
from benchmarks.tdfs_images import push_2dfs
from devstack.auth import TlsFiles, loopback_certificate
from devstack.containerd import CRI_NAMESPACE, LocalContainerd
from devstack.images import FIXED_MTIME, build_image, build_layer
from devstack.model import real_model, runtime_tree, sample_model
from devstack.registry import LocalRegistry, Served
from devstack.soci import LocalSoci, SociRoot, daemon_config, soci_cli
from devstack.stargz import build_stargz_daemon
from lazy2dfs.estargz import Compression, WriterOptions
from lazy2dfs.registry_client import SyncRegistryClient, sha256_digest
from lazy2dfs.tdfs.encode import EncodeOptions

NAME = "study"
MIB = 1 << 20
LINKS = {"loopback": LOOPBACK, "1gbit": EMULATED}
MINILM = "minilm"
MODELS = ("256", "1024", "4096", MINILM)
PARTITIONS = (25, 50, 100)
ROWS = 4
SNAPSHOTTERS = {
    "overlayfs": Format("overlayfs", "overlayfs", "tar-gz"),
    "stargz": Format("stargz 0.12", "stargz", "estargz"),
    "soci": Format("SOCI 0.4.1", "soci", "tar-gz"),
    "zstd": Format("lazy2dfs, zstd:chunked", "lazy2dfs", "2dfs-zstd"),
    "gzip": Format("lazy2dfs, gzip eStargz", "lazy2dfs", "2dfs-gzip"),
}
CRI_PEERS = ("stargz", "soci")
# Images kept with --registry-dir are reused while this matches; change it when the model,
# the writers or the peers' tools change.
IMAGE_VERSION = "study v1: f16-normal 4 shards 128 tensors, minilm 0.1.0, 4 MiB chunks"


def model_mib(model: str) -> float:
    return real_model().stat().st_size / MIB if model == MINILM else float(model)


def model_label(model: str) -> str:
    if model == MINILM:
        return "MiniLM-L6 (87 MiB)"
    size = int(model)
    return f"{size // 1024} GiB" if size >= 1024 else f"{size} MiB"


def partitions_of(model: str, asked: Sequence[int]) -> list[int]:
    """MiniLM is one file, one row: only its whole."""
    return [100] if model == MINILM else list(asked)


def _rows(model: str, percent: int) -> int:
    return 1 if model == MINILM else ROWS * percent // 100


def _repo(model: str) -> str:
    return f"study/m{model}"


@dataclass(frozen=True)
class Image:
    """What a cell pulls: a path (``repository:tag``, the host is the cell's) and the layer
    blobs the node needs for it."""

    path: str
    layers: tuple[tuple[str, int], ...]  # (digest, compressed size)
    model_mib: float  # the weights a container loads

    @property
    def needed(self) -> int:
        return sum(size for _, size in self.layers)


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...] = MODELS
    links: tuple[str, ...] = (LOOPBACK, EMULATED)
    partitions: tuple[int, ...] = PARTITIONS
    snapshotters: tuple[str, ...] = tuple(SNAPSHOTTERS)
    trials: int | None = None  # None: 3 where a run takes under a minute, 1 for the 4 GiB model
    results: Path = field(default=report.RESULTS_DIR / f"{NAME}-runs.json")
    registry_dir: Path | None = None
    out: Path = field(default=report.RESULTS_DIR)

    def trials_for(self, model: str, percent: int = 100) -> int:
        if self.trials is not None:
            return self.trials
        return 1 if (model, percent) == ("4096", 100) else 3


@dataclass(frozen=True)
class RunSpec:
    model: str
    link: str
    partition: int
    snapshotter: str
    trial: int

    @property
    def slug(self) -> str:
        link = next(name for name, label in LINKS.items() if label == self.link)
        return f"{self.model}-{link}-p{self.partition}-{self.snapshotter}-t{self.trial}"

    @property
    def key(self) -> str:
        return f"{self.model}|{self.link}|{self.partition}|{self.snapshotter}|{self.trial}"


@dataclass(frozen=True)
class Registries:
    """One storage, served twice: plain HTTP, and HTTPS for SOCI's index fetch."""

    plain: LocalRegistry
    secure: LocalRegistry
    tls: TlsFiles


# --- images ------------------------------------------------------------------------------


def _weights(model: str) -> dict[str, bytes]:
    if model == MINILM:
        return {"model/model.safetensors": real_model().read_bytes()}
    return sample_model(int(model), layers=TENSORS, dtype="F16").files


def _layers_of(ref: str) -> tuple[tuple[str, int], ...]:
    manifest = SyncRegistryClient(plain_http=True).get_image(ref).manifest
    return tuple((layer.digest, layer.size) for layer in manifest.layers)


def _push_plain(
    registries: Registries, model: str, weights: dict[str, bytes], partitions: Sequence[int]
) -> dict[int, Image]:
    """tar.gz images: per partition the base layer and the partition's shards."""
    paths = sorted(weights)
    base = build_layer(runtime_tree())
    # zlib lets go of the GIL: two threads compress two shards at once.
    with ThreadPoolExecutor(2) as pool:
        shards = list(pool.map(lambda path: build_layer({path: weights[path]}), paths))
    images = {}
    for percent in partitions:
        layers = [base, *shards[: _rows(model, percent)]]
        path = f"{_repo(model)}:tar-gz-{percent}"
        registries.plain.push(path, build_image(layers))
        images[percent] = Image(
            path,
            tuple((layer.blob.digest, len(layer.blob.data)) for layer in layers),
            sum(len(weights[p]) for p in paths[: _rows(model, percent)]) / MIB,
        )
    return images


def _first_layers(source: str, target: str, count: int) -> tuple[tuple[str, int], ...]:
    """Pushes as ``target`` the image ``source`` cut to its first ``count`` layers (manifest
    and config's diff IDs): a smaller partition of an image converted layer by layer is the
    bigger one's first layers, so each layer is converted once."""
    client = SyncRegistryClient(plain_http=True)
    fetched = client.get_manifest(source)
    manifest = json.loads(fetched.data)
    config = json.loads(client.get_blob(source, manifest["config"]["digest"]))
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:count]
    layered = [h for h in config.get("history", []) if not h.get("empty_layer")]
    config["history"] = layered[:count]
    config_data = json.dumps(config, separators=(",", ":")).encode()
    manifest["layers"] = manifest["layers"][:count]
    manifest["config"] |= {"digest": sha256_digest(config_data), "size": len(config_data)}
    client.push_blob(target, manifest["config"]["digest"], config_data)
    data = json.dumps(manifest, separators=(",", ":")).encode()
    client.push_manifest(target, data, fetched.descriptor.media_type)
    return tuple((layer["digest"], layer["size"]) for layer in manifest["layers"])


def _convert_and_index(
    registries: Registries, work: Path, plain: dict[int, Image], stargz: bool, soci: bool
) -> dict[int, Image]:
    """In a builder containerd: the biggest tar.gz partition image converted to eStargz by
    upstream's ``ctr-remote`` (and pushed; the smaller ones are its first layers), and each
    indexed by ``soci create`` (and pushed)."""
    host = registries.plain.host
    converted: dict[int, Image] = {}
    with ExitStack() as stack:
        builder = stack.enter_context(LocalContainerd(work / "builder", work / "none.sock"))
        if soci:
            stack.enter_context(SociRoot(work / "soci-build"))
        for percent, image in sorted(plain.items(), reverse=True):
            source = f"{host}/{image.path}"
            builder.ctr("images", "pull", "--plain-http", source)
            target = f"{host}/{image.path.replace(':tar-gz-', ':estargz-')}"
            if stargz and not converted:
                argv = ["ctr-remote", "--address", str(builder.address), "--namespace", "default"]
                argv += ["image", "convert", "--oci", "--estargz", source, target]
                subprocess.run(argv, check=True, capture_output=True, timeout=3600)
                builder.ctr("images", "push", "--plain-http", target)
                converted[percent] = replace(
                    image, path=target.split("/", 1)[1], layers=_layers_of(target)
                )
            elif stargz:
                whole = f"{host}/{converted[max(converted)].path}"
                layers = _first_layers(whole, target, len(image.layers))
                converted[percent] = replace(image, path=target.split("/", 1)[1], layers=layers)
            if soci:
                soci_cli(builder.address, "create", "--min-layer-size", "0", source)
                soci_cli(builder.address, "push", "--plain-http", "--quiet", source)
    return converted


def _push_2dfs(
    registries: Registries,
    work: Path,
    model: str,
    weights: dict[str, bytes],
    partitions: Sequence[int],
    compression: Compression,
    tag: str,
) -> dict[int, Image]:
    """The 2DFS image ``lazy2dfs build`` makes (row r: shard r) on a base of the same format;
    per partition, the reference lazy2dfs pulls."""
    writer = WriterOptions(chunk_size=CHUNK, compression=compression, mtime=FIXED_MTIME)
    base_layer = build_layer(runtime_tree(), estargz=writer)
    base = registries.plain.push(f"study/base:{tag}", build_image([base_layer]))
    source = work / f"build-{tag}"
    paths = sorted(weights)
    rows = push_2dfs(
        registries.plain,
        source,
        base,
        weights,
        paths,
        f"{_repo(model)}:{tag}",
        source / "cache",  # removed with the staged rows
        EncodeOptions(chunk_size=CHUNK, compression=compression),
    )
    images = {}
    for percent in partitions:
        last = _rows(model, percent) - 1
        layers = [(base_layer.blob.digest, len(base_layer.blob.data)), *rows[: last + 1]]
        images[percent] = Image(
            f"{_repo(model)}:{tag}--0.0.{last}.0",
            tuple(layers),
            sum(len(weights[p]) for p in paths[: last + 1]) / MIB,
        )
    return images


def prepare_images(
    registries: Registries, work: Path, model: str, plan: Plan, kept: Path | None
) -> dict[str, dict[int, Image]]:
    """Per image tag the snapshotters ask for, per partition: the image, built and pushed
    unless ``kept`` (the registry's storage, kept between runs) has it."""
    index = kept / "images.json" if kept else None
    known: dict[str, Any] = {}
    if index is not None and index.exists():
        saved = json.loads(index.read_text())
        if saved.get("version") == IMAGE_VERSION:
            known = saved["images"]
    partitions = partitions_of(model, plan.partitions)
    tags = {SNAPSHOTTERS[s].image for s in plan.snapshotters}
    if "soci" in plan.snapshotters:
        tags.add("soci")  # the index beside the tar.gz images
    have = known.get(model, {})
    missing = {tag for tag in tags if any(str(p) not in have.get(tag, {}) for p in partitions)}
    if missing:
        started = time.monotonic()
        weights = _weights(model)
        made: dict[str, dict[int, Image]] = {}
        if missing & {"tar-gz", "estargz", "soci"}:
            made["tar-gz"] = _push_plain(registries, model, weights, partitions)
            made["soci"] = made["tar-gz"]
            converted = _convert_and_index(
                registries, work, made["tar-gz"], "estargz" in missing, "soci" in missing
            )
            if converted:
                made["estargz"] = converted
        for tag, compression in (("2dfs-zstd", Compression.ZSTD), ("2dfs-gzip", Compression.GZIP)):
            if tag in missing:
                made[tag] = _push_2dfs(
                    registries, work, model, weights, partitions, compression, tag
                )
        del weights
        for tag, images in made.items():
            if tag in missing:
                slot = have.setdefault(tag, {})
                slot.update({str(p): asdict(image) for p, image in images.items()})
        known[model] = have
        print(
            f"study: {model_label(model)} as {', '.join(sorted(missing))} built and pushed in"
            f" {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if index is not None:
            index.write_text(json.dumps({"version": IMAGE_VERSION, "images": known}, indent=1))
    return {
        tag: {
            p: Image(v["path"], tuple((d, s) for d, s in v["layers"]), float(v["model_mib"]))
            for p, v in ((int(p), v) for p, v in have[tag].items())
            if p in partitions
        }
        for tag in tags
        if tag in have
    }


# --- one run -----------------------------------------------------------------------------


@contextmanager
def _hosts(registries: Registries, link: str, soci: bool) -> Iterator[tuple[str, str | None]]:
    """The plain host and (for SOCI) the HTTPS host to reach the registry over ``link``."""
    with registry_host(registries.plain, link) as plain:
        if not soci:
            yield plain, None
            return
        with registry_host(registries.secure, link) as secure:
            yield plain, secure


def _hosts_toml(directory: Path, host: str, ca: Path) -> None:
    """A ``hosts.toml`` in containerd's tree ``directory`` telling CRI to reach ``host`` over
    HTTPS, trusting ``ca``."""
    (directory / host).mkdir(parents=True, exist_ok=True)
    (directory / host / "hosts.toml").write_text(
        f'server = "https://{host}"\n\n[host."https://{host}"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{ca}"\n'
    )


def _in_content_store(stack: ColdStack, namespace: str, image: Image) -> list[str]:
    """The image's layer blobs containerd's content store holds: none, for a lazy pull."""
    listed = stack.containerd.ctr("content", "ls", "-q", namespace=namespace).split()
    return sorted({digest for digest, _ in image.layers} & set(listed))


def _disk_mib(work: Path) -> float:
    """What the node's directories take on disk, FUSE mounts left out (``du -x``)."""
    done = subprocess.run(
        ["du", "-sx", "--block-size=1", str(work)], capture_output=True, text=True, timeout=600
    )
    return int(done.stdout.split()[0]) / MIB if done.stdout else 0.0


def run_one(
    work: Path,
    registries: Registries,
    spec: RunSpec,
    image: Image,
    stargz_binary: Path | None,
) -> dict[str, Any]:
    """One fresh node: the cold phase, the laziness check, the wait for what the node will
    hold, the warm phase, the disk used."""
    fmt = SNAPSHOTTERS[spec.snapshotter]
    result: dict[str, Any] = {**asdict(spec), "cold": None, "warm": None}
    soci = fmt.snapshotter == "soci"
    cri = fmt.snapshotter in CRI_PEERS
    with _hosts(registries, spec.link, soci) as (plain, secure):
        ref = f"{secure or plain}/{image.path}"
        make_soci: Callable[[Path], LocalSoci] | None = None
        if secure is not None:
            config = daemon_config(secure, plain)

            def make_soci(directory: Path) -> LocalSoci:
                return LocalSoci(directory, config, registries.tls.certificate)

        namespace = CRI_NAMESPACE if cri else "default"
        binary = stargz_binary if fmt.snapshotter == "stargz" else None
        with cold_stack(
            work,
            log_level="info",
            cri=cri,
            stargz_binary=binary,
            soci=make_soci,
            cri_snapshotter=fmt.snapshotter if cri else None,
        ) as stack:
            if secure is not None:
                _hosts_toml(stack.containerd.hosts_dir, secure, registries.tls.certificate)
            served = Served(registries.plain, registries.secure)
            cold = Phase(stack, fmt, served)
            before = _children_cpu()
            pulled = pull(stack.containerd, ref, CRI if cri else fmt.snapshotter)
            pull_cpu = _children_cpu() - before
            result["layers_in_content_store"] = _in_content_store(stack, namespace, image)
            try:
                loaded = load_model(
                    stack.containerd, ref, fmt.snapshotter, 1, cold.start, namespace
                )
                result[COLD] = cold.measures(image.model_mib, loaded, pull_cpu, pulled)
            except LoadFailed as exc:
                result[COLD] = failed_load(work, spec.slug, COLD, exc)
            verified = _wait_complete(stack, fmt, served, len(image.layers))
            whole = sum(_cpu(cold.pids).values()) - sum(cold.cpu.values())
            if fmt.snapshotter == "overlayfs":
                whole += pull_cpu
            result["image"] = {
                "complete_s": time.time() - cold.start,
                "daemon_cpu_s_whole": whole,
                "fetched_total_mib": served.bytes() / MIB,
                "needed_mib": image.needed / MIB,
                "fetched_ratio": served.bytes() / image.needed,
                "layers_verified": verified,
            }
            warm = Phase(stack, fmt, Served(registries.plain, registries.secure))
            try:
                loaded = load_model(
                    stack.containerd, ref, fmt.snapshotter, 1, warm.start, namespace
                )
                result[WARM] = warm.measures(image.model_mib, loaded, 0.0, 0.0)
            except LoadFailed as exc:
                result[WARM] = failed_load(work, spec.slug, WARM, exc)
            result["disk_mib"] = _disk_mib(work)
    return result


# --- the study ---------------------------------------------------------------------------


def _load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        raw: dict[str, Any] = json.loads(path.read_text())
        return raw
    return {"runs": [], "images": {}}


def _save_results(path: Path, raw: dict[str, Any]) -> None:
    """Written whole and renamed, so an interrupted write never loses what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(raw, indent=1))
    os.replace(partial, path)


def done_keys(raw: dict[str, Any]) -> set[str]:
    """The runs a results file holds, by ``RunSpec.key``."""
    fields = RunSpec.__dataclass_fields__
    return {RunSpec(**{k: run[k] for k in fields}).key for run in raw["runs"]}


def schedule(plan: Plan, model: str) -> list[RunSpec]:
    """The runs of one model, trials interleaved across snapshotters and partitions."""
    percents = partitions_of(model, plan.partitions)
    return [
        RunSpec(model, link, percent, snapshotter, trial)
        for link in plan.links
        for trial in range(max(plan.trials_for(model, p) for p in percents))
        for percent in percents
        if trial < plan.trials_for(model, percent)
        for snapshotter in plan.snapshotters
    ]


def _summary(result: dict[str, Any]) -> str:
    parts = [
        f"{model_label(result['model'])} {result['link']} {result['partition']} %"
        f" {result['snapshotter']} trial {result['trial'] + 1}:"
    ]
    if result.get("layers_in_content_store") and result["snapshotter"] != "overlayfs":
        parts.append("NOT LAZY (left out);")
    for state in (COLD, WARM):
        phase = result.get(state)
        if phase and "failed" in phase:
            parts.append(f"{state} FAILED;")
        elif phase:
            parts.append(
                f"{state} ready {phase['ready_s']:.2f}s first {phase['first_tensor_s']:.2f}s;"
            )
    if "image" in result:
        parts.append(f"fetched {result['image']['fetched_ratio']:.3f}x")
    return " ".join(parts)


def run_plan(plan: Plan) -> Path:
    raw = _load_results(plan.results)
    raw["plan"] = {
        "snapshotters": {key: fmt.label for key, fmt in SNAPSHOTTERS.items()},
        "models": {model: model_label(model) for model in MODELS},
    }
    done = done_keys(raw)
    png = plan.out / f"{NAME}.png"
    with tempfile.TemporaryDirectory(prefix="l2d-study-") as tmp:
        work = Path(tmp)
        stargz_binary = None
        if "stargz" in plan.snapshotters:
            stargz_binary = build_stargz_daemon(work / "stargz-build")
        storage = plan.registry_dir / "storage" if plan.registry_dir else work / "storage"
        tls = loopback_certificate(work / "tls")
        with (
            LocalRegistry(work / "registry", storage=storage) as plain,
            LocalRegistry(work / "registry-tls", storage=storage, tls=tls) as secure,
        ):
            registries = Registries(plain, secure, tls)
            try:
                for model in plan.models:
                    todo = [spec for spec in schedule(plan, model) if spec.key not in done]
                    if not todo:
                        continue
                    images = prepare_images(registries, work, model, plan, plan.registry_dir)
                    raw["images"][model] = {
                        tag: {str(p): asdict(i) for p, i in by.items()}
                        for tag, by in images.items()
                    }
                    for spec in todo:
                        image = images[SNAPSHOTTERS[spec.snapshotter].image][spec.partition]
                        result = run_one(work / spec.slug, registries, spec, image, stargz_binary)
                        result["measured"] = report.machine()["when"]
                        raw["runs"].append(result)
                        done.add(spec.key)
                        _save_results(plan.results, raw)
                        print(f"study: {_summary(result)}", flush=True)
                    png = study_report.write(raw, plan.out)
            finally:
                if raw["runs"]:
                    _save_results(plan.results, raw)
                    png = study_report.write(raw, plan.out)
    return png


def run() -> Path:
    """The whole study (``make study``)."""
    return run_plan(Plan())


def parse_plan(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study",
        description="Model ready for overlayfs, stargz, SOCI and lazy2dfs (zstd:chunked, gzip"
        " eStargz) by model size, 2DFS partition and link, cold and warm. Without options: the"
        " whole study, as `make study` runs it. Runs already in the results file are skipped.",
    )
    default = Plan()
    parser.add_argument(
        "--models",
        "--sizes",
        nargs="+",
        choices=list(MODELS),
        default=list(default.models),
        help="256, 1024, 4096 (MiB of F16 shards) and minilm (the real checkpoint)",
    )
    parser.add_argument("--links", nargs="+", choices=list(LINKS), default=list(LINKS))
    parser.add_argument(
        "--partitions", nargs="+", type=int, choices=PARTITIONS, default=list(PARTITIONS)
    )
    parser.add_argument(
        "--snapshotters",
        nargs="+",
        choices=list(SNAPSHOTTERS),
        default=list(default.snapshotters),
    )
    parser.add_argument(
        "--trials", type=int, help="runs per cell (default: 3; 1 for the whole 4 GiB model)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=default.results,
        help=f"the runs so far, read and extended (default: {default.results})",
    )
    parser.add_argument(
        "--registry-dir",
        type=Path,
        metavar="DIR",
        help="keep the built images in DIR and reuse them in later runs",
    )
    parser.add_argument("--out", type=Path, default=report.RESULTS_DIR, metavar="DIR")
    args = parser.parse_args(argv)
    return Plan(
        models=tuple(args.models),
        links=tuple(LINKS[name] for name in args.links),
        partitions=tuple(args.partitions),
        snapshotters=tuple(args.snapshotters),
        trials=args.trials,
        results=args.results,
        registry_dir=args.registry_dir,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> None:
    print(f"study: {run_plan(parse_plan(argv))}")


if __name__ == "__main__":
    main()
