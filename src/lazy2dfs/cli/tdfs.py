"""The 2DFS commands: ``lazy2dfs build`` (an image from a base and a 2dfs.json) and
``lazy2dfs field`` (allotments from safetensors weights)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lazy2dfs.chunking import Compression
from lazy2dfs.cli.convert import add_compression_option
from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.progress import human_bytes

if TYPE_CHECKING:
    from lazy2dfs.registry_client import Platform


def register(subparsers: Subparsers) -> None:
    _register_build(subparsers)
    _register_field(subparsers)


def _register_build(subparsers: Subparsers) -> None:
    cores = os.cpu_count() or 1
    command = subparsers.add_parser(
        "build",
        help="build a 2DFS image (allotments in eStargz) from a base image and a 2dfs.json",
        description="Adds the allotments of a 2dfs.json build file to BASE as a 2DFS field "
        "and publishes the image as TARGET. Unchanged allotments are taken from the cache.\n\n"
        "BASE is any image in a registry that holds what the model's container runs (e.g."
        " docker.io/library/python:3.11-slim, or your serving image pushed to your registry)."
        " Its layers are kept as they are: plain tar.gz layers are downloaded in full at each"
        " pull (`lazy2dfs convert BASE BASE-lazy` first, and build on that, to have them lazy"
        " too). The allotments are always lazy.",
    )
    command.add_argument(
        "base", metavar="BASE", help="base image reference (what the container runs)"
    )
    command.add_argument("target", metavar="TARGET", help="reference of the image to make")
    command.add_argument(
        "-f",
        "--file",
        type=Path,
        default=Path("2dfs.json"),
        help="build file; relative src paths start from its directory (default ./2dfs.json)",
    )
    command.add_argument(
        "--platform",
        action="append",
        default=[],
        type=_platform,
        help="os/arch[/variant] of the base to keep; repeat for several (default: all)",
    )
    command.add_argument("--push", action="store_true", help="push the image to TARGET")
    command.add_argument("--as-tar", type=Path, metavar="FILE", help="write an OCI layout tar")
    command.add_argument("--plain-http", action="store_true", help="use http:// for every registry")
    command.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="allotment and blob cache (default $XDG_CACHE_HOME/lazy2dfs, or ~/.cache/lazy2dfs)",
    )
    command.add_argument(
        "--chunk-size",
        type=int,
        help="eStargz chunk size in bytes (default 4 MiB)",
    )
    command.add_argument(
        "--jobs", type=int, default=2, help="allotments encoded at once (default 2)"
    )
    command.add_argument(
        "--workers",
        type=int,
        default=cores,
        help=f"compression threads per allotment (default: cores, {cores})",
    )
    add_compression_option(command)
    command.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    command.set_defaults(func=_build)


def _platform(text: str) -> Platform:
    """argparse reports only ArgumentTypeError as a usage error, with the usage line."""
    from lazy2dfs.registry_client import parse_platform

    try:
        return parse_platform(text)
    except InvalidArgumentError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _build(args: argparse.Namespace) -> int:
    # Here, not above: every command's parser is built, and building imports the most.
    from lazy2dfs.progress import Progress
    from lazy2dfs.tdfs.builder import BuildRequest, build
    from lazy2dfs.tdfs.cache import default_cache_root
    from lazy2dfs.tdfs.encode import EncodeOptions

    chunking = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    request = BuildRequest(
        spec=args.file,
        base=args.base,
        target=args.target,
        platforms=tuple(args.platform),
        push=args.push,
        as_tar=args.as_tar,
        plain_http=args.plain_http,
        cache_root=args.cache_dir or default_cache_root(),
        encode=EncodeOptions(
            **chunking,
            workers=args.workers,
            compression=Compression(args.compression),
        ),
        jobs=args.jobs,
    )
    result = build(request, progress=Progress(quiet=args.quiet))
    if args.json:
        report = {
            "reference": str(result.reference),
            "index": result.image.index_digest,
            "allotments": [
                {"row": a.row, "col": a.col, "digest": a.blob.digest, "size": a.blob.size}
                | {"cached": a.cached}
                for a in result.allotments
            ],
            "uploaded": list(result.uploaded),
        }
        print(json.dumps(report, indent=2))
        return 0
    print(result.reference)
    return 0


def _register_field(subparsers: Subparsers) -> None:
    command = subparsers.add_parser(
        "field",
        help="prepare 2DFS fields",
        description="Prepares the allotments of a 2DFS field from model weights, for"
        " `lazy2dfs build`.",
    )
    actions = command.add_subparsers(dest="field_command", required=True, metavar="COMMAND")
    split = actions.add_parser(
        "from-safetensors",
        help="split model weights by layer into row groups and write a 2dfs.json",
        description="Groups the tensors of MODEL (several files are shards of one model) by "
        "layer index into N rows of consecutive layers; embeddings go to the first row, final "
        "norm and head to the last. Writes one .safetensors file per row, the "
        "model.safetensors.index.json Hugging Face loaders read (in every row), and a "
        "2dfs.json.",
    )
    split.add_argument("models", nargs="+", type=Path, metavar="MODEL.safetensors")
    split.add_argument("--rows", type=int, required=True, metavar="N", help="number of rows")
    split.add_argument(
        "--out", type=Path, default=Path("."), help="output directory (default: current)"
    )
    split.add_argument(
        "--dst-dir", default="/model", help="directory of the files in the image (default /model)"
    )
    split.add_argument("--json", action="store_true", help="print the result as JSON")
    split.set_defaults(func=_from_safetensors)


def _from_safetensors(args: argparse.Namespace) -> int:
    from lazy2dfs.tdfs.safetensors_split import split_safetensors

    result = split_safetensors(args.models, args.rows, args.out, args.dst_dir)
    if args.json:
        rows = [
            {"row": g.row, "col": 0, "layers": list(g.layers), "tensors": g.tensors}
            | {"size": g.size, "path": str(g.path)}
            for g in result.rows
        ]
        print(json.dumps({"spec": str(result.spec), "rows": rows}, indent=2))
        return 0
    for group in result.rows:
        layers = f"layers {group.layers[0]}-{group.layers[-1]}" if group.layers else "no layers"
        print(
            f"row {group.row}: {layers}, {group.tensors} tensors, "
            f"{human_bytes(group.size)} -> {group.path}"
        )
    print(f"wrote {result.index} and {result.spec}")
    return 0
