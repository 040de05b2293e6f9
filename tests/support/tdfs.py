"""2DFS images for end-to-end tests: the ``lazy2dfs`` command, and images read back from the
registry as ``lazy2dfs pull`` would partition them."""

import subprocess
from pathlib import Path

import trio

from devstack.process import lazy2dfs_argv
from lazy2dfs.registry_client import RegistryClient
from lazy2dfs.tdfs import PartitionedImage, fetch_partitioned_image, field_descriptor, parse_field


def lazy2dfs(*args: str, cwd: Path | None = None) -> str:
    """Runs the ``lazy2dfs`` command, which must succeed; returns its standard error."""
    done = subprocess.run(
        [*lazy2dfs_argv(), *args], capture_output=True, text=True, timeout=900, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def allotment_digests(ref: str) -> dict[int, str]:
    """Row → blob digest of the column-0 allotments of the 2DFS image ``ref``."""

    async def fetch() -> dict[int, str]:
        async with RegistryClient(plain_http=True) as client:
            image = await client.get_image(ref)
            blob = await client.get_blob(image.reference, field_descriptor(image.manifest).digest)
            return {a.row: a.blob_digest for a in parse_field(blob).allotments()}

    return trio.run(fetch)


def partitioned_image(ref: str) -> PartitionedImage:
    """What a partition reference names, computed as ``lazy2dfs pull`` computes it."""

    async def fetch() -> PartitionedImage:
        async with RegistryClient(plain_http=True) as client:
            return await fetch_partitioned_image(client, ref)

    return trio.run(fetch)
