"""`make bench`: runs every benchmark and says where the results are."""

from __future__ import annotations

from benchmarks import snapshot_api


def main() -> None:
    for bench in (snapshot_api,):
        print(f"{bench.__name__}: {bench.run()}")


if __name__ == "__main__":
    main()
