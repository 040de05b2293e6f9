"""Fetching what a partitioned reference (``model:v1--0.0.1.0``) names, from any OCI registry.

The registry serves the 2DFS image unchanged; this reads its platform manifest, config and field
and computes the partitioned image on the client. Sizes the field does not carry (fields from
the stock builder) cost one HEAD request per selected allotment.
"""

from __future__ import annotations

from lazy2dfs.registry_client import Platform, Reference, RegistryClient
from lazy2dfs.tdfs.field import parse_field
from lazy2dfs.tdfs.partition import (
    PartitionedImage,
    field_descriptor,
    missing_sizes,
    partition_image,
)


async def fetch_partitioned_image(
    client: RegistryClient, ref: Reference | str, platform: Platform | None = None
) -> PartitionedImage:
    """The partitioned image for ``ref``'s partitions (the whole field when it has none)."""
    image = await client.get_image(ref, platform)
    pinned = image.reference
    field = parse_field(await client.get_blob(pinned, field_descriptor(image.manifest).digest))
    config = await client.get_blob(pinned, image.manifest.config.digest)
    sizes = {
        digest: await client.stat_blob(pinned, digest)
        for digest in missing_sizes(field, pinned.partitions)
    }
    return partition_image(image.manifest, config, field, pinned.partitions, sizes)
