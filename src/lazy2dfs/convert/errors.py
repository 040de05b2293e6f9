"""Why an image cannot be converted."""

from __future__ import annotations

from lazy2dfs.errors import IntegrityError, InvalidArgumentError


class ConfigMismatchError(IntegrityError):
    """A layer's uncompressed digest is not among the config's diff IDs: the source image is
    inconsistent, and converting it would publish an image containerd refuses to unpack."""


class UnsupportedImageError(InvalidArgumentError):
    """The source is not something convert can rewrite (not an image, or a layer it cannot
    decompress)."""
