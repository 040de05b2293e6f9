"""`make bench`: runs every benchmark and says where the results are."""

from __future__ import annotations

import sys

from benchmarks import (
    build,
    codecs,
    cri_partition,
    fleet,
    model_ready,
    partition_matrix,
    reliability,
    restart_gap,
    snapshot_api,
    verify_window,
)

BENCHMARKS = {
    "snapshot_api": snapshot_api,
    "model_ready": model_ready,
    "partition_matrix": partition_matrix,
    "cri_partition": cri_partition,
    "codecs": codecs,
    "build": build,
    "restart_gap": restart_gap,
    "reliability": reliability,
    "verify_window": verify_window,
    "fleet": fleet,
}


def main() -> None:
    """``python -m benchmarks.run [NAME...]``: the named benchmarks, or all of them."""
    for name in sys.argv[1:] or list(BENCHMARKS):
        print(f"{name}: {BENCHMARKS[name].run()}", flush=True)


if __name__ == "__main__":
    main()
