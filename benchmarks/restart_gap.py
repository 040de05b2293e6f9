"""How long a running container's reads stall while the daemon restarts under it.

A container reads a lazily pulled weights file 1 MiB at a time, paced (one read every 50 ms),
hashing everything it reads and noting each read's number in a log on the host, where the
benchmark notes when each line appears. A third of the way in, the daemon is killed (``kill
-9``) or stopped (SIGTERM) and started again at once; the FUSE keeper holds the mount and the
container's requests meanwhile. Background fetch is off, so reads after the restart need the
new daemon and the registry.

Figures per way of stopping: the longest pause between two reads around the restart against
the median pause (the baseline, same run), the daemon's own restart time (signal to serving
socket), reads attempted and failed, and whether the bytes the container read hash right.
"""

from __future__ import annotations

import hashlib
import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from devstack.containerd import LocalContainerd
from devstack.images import build_image, build_layer
from devstack.model import bf16_like, runtime_tree
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.estargz import WriterOptions

MIB = 1 << 20
READS = 96
RESTART_AT = READS // 3
PACE_US = 50_000
ESTARGZ = WriterOptions(chunk_size=4 * MIB, mtime=946684800)
WAIT_SECONDS = 120.0
POLL_SECONDS = 0.005
# Each read is its own dd, so a failed one is counted and the loop goes on.
READER = f"""i=0
while [ $i -lt {READS} ]; do
  dd if=/model/weights.bin bs={MIB} skip=$i count=1 2>/dev/null || echo $i >> /out/failed
  echo $i >> /out/log
  usleep {PACE_US}
  i=$((i+1))
done | sha256sum > /out/sum.tmp
mv /out/sum.tmp /out/sum
"""


def _lines(log: Path) -> int:
    try:
        return log.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _trial(work: Path, registry: LocalRegistry, crash: bool) -> dict[str, Any]:
    weights = bf16_like(READS * MIB, seed=7 if crash else 8)
    image = build_image(
        [
            build_layer(runtime_tree(), estargz=ESTARGZ),
            build_layer({"model/weights.bin": weights}, estargz=ESTARGZ),
        ]
    )
    ref = registry.push(f"bench/restart:{'kill' if crash else 'term'}", image)
    out = work / "out"
    out.mkdir(parents=True)
    log = out / "log"
    config = "[fetch]\nbackground = false\n"
    with (
        LocalSnapshotter(work / "s", config=config, log_level="warning") as daemon,
        LocalContainerd(work / "c", daemon.address) as containerd,
    ):
        containerd.lazy_pull(ref)
        bind = f"type=bind,src={out},dst=/out,options=rbind:rw"
        argv = ("run", "-d", "--snapshotter", "lazy2dfs", "--mount", bind, ref, "reader")
        containerd.ctr(*argv, "/bin/sh", "-c", READER)
        seen: list[float] = []  # when each read's line appeared
        restart: list[float] = []

        def restart_daemon() -> None:
            started = time.monotonic()
            if crash:
                daemon.kill()
            else:
                daemon.stop_daemon()
            daemon.start()
            restart.append(time.monotonic() - started)

        # On a thread, so that reads the container makes meanwhile are seen when they happen.
        restarter = threading.Thread(target=restart_daemon)
        deadline = time.monotonic() + WAIT_SECONDS
        try:
            while not (out / "sum").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the reader did not finish in {WAIT_SECONDS}s")
                seen += [time.monotonic()] * (_lines(log) - len(seen))
                if len(seen) >= RESTART_AT and not restarter.ident:
                    restarter.start()
                time.sleep(POLL_SECONDS)
            seen += [time.monotonic()] * (_lines(log) - len(seen))
        finally:
            if restarter.ident:
                restarter.join(WAIT_SECONDS)
            containerd.ctr("task", "rm", "-f", "reader", check=False)
            containerd.ctr("containers", "rm", "reader", check=False)
        failed = _lines(out / "failed")
        right = (out / "sum").read_text().split()[0] == hashlib.sha256(weights).hexdigest()
    pauses = [b - a for a, b in itertools.pairwise(seen)]
    around = pauses[RESTART_AT - 2 : RESTART_AT + 8]
    return {
        "reads": len(seen),
        "failed": failed,
        "bytes_right": right,
        "longest_pause": max(around),
        "median_pause": statistics.median(pauses),
        "daemon_restart": restart[0],
    }


def run() -> Path:
    raw: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="l2d-gap-") as tmp,
        LocalRegistry(Path(tmp) / "registry") as registry,
    ):
        for crash in (True, False):
            name = "kill -9, start" if crash else "SIGTERM, start"
            raw[name] = _trial(Path(tmp) / name.split(",")[0].replace(" ", ""), registry, crash)
    rows = [
        [
            name,
            r["reads"],
            r["failed"],
            "yes" if r["bytes_right"] else "NO",
            round(r["daemon_restart"], 2),
            round(r["longest_pause"], 2),
            round(r["median_pause"], 3),
        ]
        for name, r in raw.items()
    ]
    columns = [
        "daemon",
        "reads attempted",
        "reads failed",
        "bytes read hash right",
        "daemon restart s (signal to serving)",
        "restart gap s (longest pause between reads)",
        "median pause s (baseline)",
    ]
    plot = {
        name: {"restart gap": r["longest_pause"], "daemon restart": r["daemon_restart"]}
        for name, r in raw.items()
    }
    return report.write(
        "restart_gap",
        "A running container reading lazily pulled weights across a daemon restart",
        columns,
        rows,
        raw,
        plot,
        "seconds",
    )
