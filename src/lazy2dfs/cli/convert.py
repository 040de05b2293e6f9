"""``lazy2dfs convert``: rewrite an image in a registry as eStargz or zstd:chunked."""

from __future__ import annotations

import argparse
import os

from lazy2dfs.convert import ConvertOptions, convert
from lazy2dfs.estargz.writer import DEFAULT_CHUNK_SIZE
from lazy2dfs.progress import Progress


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _run_cli(args: argparse.Namespace) -> int:
    options = ConvertOptions(zstd=args.zstd, chunk_size=args.chunk_size, workers=args.workers)
    result = convert(args.src, args.dst, options, plain_http=args.plain_http, progress=Progress())
    fmt = "zstd:chunked" if args.zstd else "eStargz"
    print(
        f"{args.dst}@{result.root_digest}: {len(result.layers)} layers as {fmt};"
        f" blobs {result.blobs_pushed} pushed, {result.blobs_present} already present;"
        f" manifests {result.manifests_pushed} pushed, {result.manifests_present} unchanged"
        + (f"; {len(result.dropped)} attestation manifests dropped" if result.dropped else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``convert`` to the ``lazy2dfs`` command line."""
    command = subparsers.add_parser(
        "convert",
        help="convert an image in a registry to eStargz (or zstd:chunked) for lazy pulls",
        description="Converts every platform of SRC_REF and pushes it as DST_REF (OCI media"
        " types and annotations; the config's diff IDs updated). Layers the registry already"
        " has are not pushed again, so re-running is cheap.",
    )
    command.add_argument("src", metavar="SRC_REF", help="image to convert")
    command.add_argument("dst", metavar="DST_REF", help="where to push the result (with a tag)")
    command.add_argument(
        "--plain-http", action="store_true", help="reach both registries over HTTP (not TLS)"
    )
    command.add_argument("--zstd", action="store_true", help="write zstd:chunked, not eStargz")
    command.add_argument(
        "--chunk-size",
        type=_positive,
        default=DEFAULT_CHUNK_SIZE,
        metavar="N",
        help=f"bytes per chunk of a large file (default {DEFAULT_CHUNK_SIZE})",
    )
    command.add_argument(
        "--workers",
        type=_positive,
        default=os.cpu_count() or 1,
        help="compression threads (default: every core)",
    )
    command.set_defaults(func=_run_cli)
