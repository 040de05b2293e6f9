"""Rewrite a whole image in a registry as eStargz (or zstd:chunked).

Every platform manifest is converted (an index stays an index); each tar layer is downloaded,
decompressed once (which also checks the config's diff ID for it), rewritten by the eStargz
writer on every core, checked by reading its TOC back, and pushed unless the registry already
has that digest. The writer is deterministic, so a second run makes the same blobs and pushes
nothing new.

The eStargz tar is not the source tar: it gains a landmark entry and ``stargz.index.json``, and
its headers are rebuilt. The diff IDs therefore always change and the config is rewritten with
the new ones (containerd verifies an unpacked layer against them). Docker schema 2 input becomes
OCI output, because only OCI descriptors carry the annotations (TOC digest) a lazy pull needs.

The rewriting of manifests, configs and indexes is pure (bytes in, bytes out, ``documents``)
so that it can be tested without a registry; one layer's download, decompression and rewriting
is ``layer``; :func:`convert` (``run``) does the registry I/O.
"""

from lazy2dfs.convert.documents import ConvertedLayer
from lazy2dfs.convert.errors import ConfigMismatchError, UnsupportedImageError
from lazy2dfs.convert.layer import ConvertOptions
from lazy2dfs.convert.run import ConvertResult, convert, convert_async

__all__ = [
    "ConfigMismatchError",
    "ConvertOptions",
    "ConvertResult",
    "ConvertedLayer",
    "UnsupportedImageError",
    "convert",
    "convert_async",
]
