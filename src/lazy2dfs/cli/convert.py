"""``lazy2dfs convert``: rewrite an image in a registry as zstd:chunked or eStargz."""

from __future__ import annotations

import argparse
import json
import os

from lazy2dfs.chunking import DEFAULT_CHUNK_SIZE, Compression
from lazy2dfs.cli.parser import Subparsers


def add_compression_option(command: argparse.ArgumentParser) -> None:
    """``--compression``, shared by ``convert`` and ``build``."""
    command.add_argument(
        "--compression",
        choices=[str(c) for c in Compression],
        default=str(Compression.ZSTD),
        help="zstd writes zstd:chunked (default: decodes ~2.5x faster); gzip writes eStargz,"
        " a plain tar.gz to clients that know no other format (the stock 2DFS registry)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _run_cli(args: argparse.Namespace) -> int:
    # Here, not above: every command's parser is built, and this one's work imports the most.
    from lazy2dfs.convert import ConvertOptions, convert
    from lazy2dfs.progress import Progress

    options = ConvertOptions(
        compression=Compression(args.compression), chunk_size=args.chunk_size, workers=args.workers
    )
    result = convert(args.src, args.dst, options, plain_http=args.plain_http, progress=Progress())
    fmt = "zstd:chunked" if options.compression is Compression.ZSTD else "eStargz"
    if args.json:
        report = {
            "reference": f"{args.dst}@{result.root_digest}",
            "format": fmt,
            "layers": [
                {"source": layer.source_digest, "digest": layer.digest, "size": layer.size}
                | {"toc_digest": layer.toc_digest, "pushed": layer.pushed}
                for layer in result.layers.values()
            ],
            "blobs_pushed": result.blobs_pushed,
            "blobs_present": result.blobs_present,
            "manifests_pushed": result.manifests_pushed,
            "manifests_present": result.manifests_present,
            "dropped": result.dropped,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.dst}@{result.root_digest}: {len(result.layers)} layers as {fmt};"
        f" blobs {result.blobs_pushed} pushed, {result.blobs_present} already present;"
        f" manifests {result.manifests_pushed} pushed, {result.manifests_present} unchanged"
        + (f"; {len(result.dropped)} attestation manifests dropped" if result.dropped else "")
    )
    return 0


def register(subparsers: Subparsers) -> None:
    """Adds ``convert`` to the ``lazy2dfs`` command line."""
    command = subparsers.add_parser(
        "convert",
        help="convert an image in a registry to zstd:chunked (or eStargz) for lazy pulls",
        description="Converts every platform of SRC_REF and pushes it as DST_REF (OCI media"
        " types and annotations; the config's diff IDs updated). Layers the registry already"
        " has are not pushed again, so re-running is cheap.",
    )
    command.add_argument("src", metavar="SRC_REF", help="image to convert")
    command.add_argument("dst", metavar="DST_REF", help="where to push the result (with a tag)")
    command.add_argument(
        "--plain-http", action="store_true", help="reach both registries over HTTP (not TLS)"
    )
    add_compression_option(command)
    command.add_argument("--json", action="store_true", help="print the result as JSON")
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
