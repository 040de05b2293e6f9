"""Errors of the 2DFS code, each a subclass of the shared domain errors.

The CLI prints their message and the gRPC layer maps the base class to a status code, so every
class here says what is wrong in words a user can act on (which row, which rectangle, which file).
"""

from lazy2dfs.errors import InvalidArgumentError, NotFoundError


class FieldFormatError(InvalidArgumentError):
    """A field blob is not the JSON the 2DFS builder writes (or that lazy2dfs extends)."""


class NotA2dfsImageError(InvalidArgumentError):
    """An image has no field descriptor (or several), so it cannot be partitioned."""


class PartitionOutsideFieldError(InvalidArgumentError):
    """A partition rectangle does not overlap the field at all."""


class EmptyPartitionError(InvalidArgumentError):
    """The partitions overlap the field but select no allotment."""


class ImageConfigError(InvalidArgumentError):
    """An image config is not a JSON object with ``rootfs.diff_ids`` matching the layers."""


class BlobSizeUnknownError(NotFoundError):
    """A selected allotment's compressed size is neither in the field nor given by the caller."""


class BuildSpecError(InvalidArgumentError):
    """A ``2dfs.json`` build file is malformed or names sources that cannot be used."""


class SafetensorsFormatError(InvalidArgumentError):
    """A ``.safetensors`` file is malformed, or cannot be split as asked."""
