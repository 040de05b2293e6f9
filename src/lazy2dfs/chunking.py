"""How a layer writer cuts and compresses files: the two choices the command line offers.

Apart from the format library (``estargz``), which every command would otherwise import to
build its parser: on a cold page cache that import took about 0.15 s of each command's start,
``lazy2dfs pull``'s too, which a container's first tensor waits for.
"""

from __future__ import annotations

from enum import StrEnum

# Bytes per chunk of a large file: the unit one read fetches, decodes and verifies.
DEFAULT_CHUNK_SIZE = 4 << 20


class Compression(StrEnum):
    """How each chunk's member is compressed; decides how ``estargz.decode_chunk`` reads it."""

    GZIP = "gzip"
    ZSTD = "zstd"
