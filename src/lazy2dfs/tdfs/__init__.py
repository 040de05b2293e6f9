"""2DFS: the field model, partitions computed on the client, and the eStargz builder.

A 2DFS image is an OCI index whose platform manifests list the base layers and then one
*field* blob, which places *allotments* (tar.gz blobs, here eStargz) on a grid of rows and
columns. A reference with partition suffixes (``model:v1--0.0.1.0``) names the image made of
the base layers and the allotments inside the rectangles; :func:`partition_image` computes it
from the pieces, :func:`fetch_partitioned_image` from a registry. :func:`build` makes 2DFS
images from a base image and a ``2dfs.json``; :func:`split_safetensors` writes such a build
file from model weights. ``tdfs.mirror`` serves partitions to containerd from the daemon (a
read-only registry endpoint named in hosts.toml), so that every client can pull them.
"""

from lazy2dfs.tdfs.builder import BuildRequest, BuildResult, build
from lazy2dfs.tdfs.encode import EncodedAllotment, EncodeOptions
from lazy2dfs.tdfs.errors import (
    BlobSizeUnknownError,
    BuildSpecError,
    EmptyPartitionError,
    FieldFormatError,
    ImageConfigError,
    NotA2dfsImageError,
    PartitionOutsideFieldError,
    SafetensorsFormatError,
)
from lazy2dfs.tdfs.field import (
    FIELD_MEDIA_TYPE,
    IMAGE_NAME_ANNOTATION,
    Allotment,
    Field,
    parse_field,
)
from lazy2dfs.tdfs.partition import (
    PartitionedImage,
    allotment_layer,
    field_descriptor,
    missing_sizes,
    partition_image,
    select_allotments,
)
from lazy2dfs.tdfs.resolve import fetch_partitioned_image
from lazy2dfs.tdfs.safetensors_split import SplitResult, split_safetensors
from lazy2dfs.tdfs.spec import AllotmentSpec, BuildSpec, FileCopy, load_spec, parse_spec

__all__ = [
    "FIELD_MEDIA_TYPE",
    "IMAGE_NAME_ANNOTATION",
    "Allotment",
    "AllotmentSpec",
    "BlobSizeUnknownError",
    "BuildRequest",
    "BuildResult",
    "BuildSpec",
    "BuildSpecError",
    "EmptyPartitionError",
    "EncodeOptions",
    "EncodedAllotment",
    "Field",
    "FieldFormatError",
    "FileCopy",
    "ImageConfigError",
    "NotA2dfsImageError",
    "PartitionOutsideFieldError",
    "PartitionedImage",
    "SafetensorsFormatError",
    "SplitResult",
    "allotment_layer",
    "build",
    "fetch_partitioned_image",
    "field_descriptor",
    "load_spec",
    "missing_sizes",
    "parse_field",
    "parse_spec",
    "partition_image",
    "select_allotments",
    "split_safetensors",
]
