"""Typed errors of the eStargz / zstd:chunked formats.

A blob comes from a registry we do not control, so every malformed byte must surface as one of
these (never as a ``KeyError`` or ``zlib.error``): the snapshotter maps them to "fall back to a
full pull" and the FUSE layer to ``EIO``. They subclass the project's domain errors so that the
gRPC mapping in one place stays complete.
"""

from lazy2dfs.digest import DigestMismatchError
from lazy2dfs.errors import IntegrityError, InvalidArgumentError


class FormatError(IntegrityError):
    """The blob's structure (footer, TOC member, TOC JSON, chunk layout) is corrupt."""


class FooterError(FormatError):
    """The blob does not end with a footer we know (eStargz, legacy stargz, zstd:chunked)."""


class TocError(FormatError):
    """The TOC cannot be read or does not describe a consistent file tree."""


class TocTooLargeError(TocError):
    """The TOC exceeds the configured size or entry-count cap; refusing protects memory."""


class UnsafePathError(TocError):
    """An entry name is absolute or climbs out of the layer root with ``..``."""


class TocDigestMismatchError(DigestMismatchError):
    """The TOC JSON does not match the expected ``containerd.io/snapshot/stargz/toc.digest``."""


class ChunkDigestMismatchError(DigestMismatchError):
    """A decompressed chunk does not match its ``chunkDigest``; the bytes are never returned."""


class CompressedDataError(FormatError):
    """Bytes handed in as a gzip member or zstd frame (a chunk's, the TOC's) do not decompress."""


class SourceError(InvalidArgumentError):
    """The writer's input (tar stream, directory, options) cannot be turned into a blob."""
