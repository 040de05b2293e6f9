"""Fetching what a partitioned reference (``model:v1--0.0.1.0``) names, from any OCI registry.

The registry serves the 2DFS image unchanged; this reads its platform manifest, config and field
and computes the partitioned image on the client. Sizes the field does not carry (fields from
the stock builder) cost one HEAD request per selected allotment, a few at a time.
"""

from __future__ import annotations

from typing import Final

import trio

from lazy2dfs.registry_client import Platform, Reference, RegistryClient
from lazy2dfs.tdfs.field import parse_field
from lazy2dfs.tdfs.partition import (
    PartitionedImage,
    field_descriptor,
    missing_sizes,
    partition_image,
)

# A field of 10 000 allotments is about 2 MiB, a config a few KiB: more is not an image's.
MAX_FIELD_SIZE: Final = 16 << 20
MAX_CONFIG_SIZE: Final = 16 << 20
SIZE_REQUESTS_AT_ONCE: Final = 8


async def fetch_partitioned_image(
    client: RegistryClient, ref: Reference | str, platform: Platform | None = None
) -> PartitionedImage:
    """The partitioned image for ``ref``'s partitions (the whole field when it has none)."""
    image = await client.get_image(ref, platform)
    pinned = image.reference
    field_blob = field_descriptor(image.manifest).digest
    field = parse_field(await client.get_blob(pinned, field_blob, MAX_FIELD_SIZE))
    config = await client.get_blob(pinned, image.manifest.config.digest, MAX_CONFIG_SIZE)
    unsized = missing_sizes(field, pinned.partitions)  # raises for an empty partition
    sizes: dict[str, int] = {}
    failures: list[Exception] = []
    limiter = trio.CapacityLimiter(SIZE_REQUESTS_AT_ONCE)

    async def stat(digest: str) -> None:
        async with limiter:
            if failures:
                return
            try:
                sizes[digest] = await client.stat_blob(pinned, digest)
            except Exception as err:  # re-raised below as itself, not in an exception group
                failures.append(err)

    async with trio.open_nursery() as nursery:
        for digest in unsized:
            nursery.start_soon(stat, digest)
    if failures:
        raise failures[0]
    return partition_image(image.manifest, config, field, pinned.partitions, sizes)
