"""OCI distribution client: references (with 2DFS partitions), manifests, verified blobs,
range reads with the fallbacks registries and pull-through mirrors need, auth, containerd
hosts.toml mirrors, and push."""

from lazy2dfs.digest import DigestMismatchError, InvalidDigestError, sha256_digest, validate_digest
from lazy2dfs.registry_client.blobs import BlobReader
from lazy2dfs.registry_client.client import FetchedManifest, RegistryClient, ResolvedImage
from lazy2dfs.registry_client.credentials import Credentials, CredentialStore
from lazy2dfs.registry_client.errors import (
    BlobNotFoundError,
    ConfigError,
    InvalidReferenceError,
    MalformedManifestError,
    ManifestNotFoundError,
    PlatformNotFoundError,
    RangeError,
    RegistryProtocolError,
    RegistryUnavailableError,
    UnauthorizedError,
    UnsupportedManifestError,
)
from lazy2dfs.registry_client.hosts import Capability, Endpoint, RegistryHosts
from lazy2dfs.registry_client.manifest import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    DescriptorPlatform,
    ImageIndex,
    ImageManifest,
    oci_media_type,
    parse_manifest,
    select_platform,
)
from lazy2dfs.registry_client.platform import Platform, host_platform, parse_platform
from lazy2dfs.registry_client.reference import Partition, Reference, parse_reference
from lazy2dfs.registry_client.retry import RetryPolicy
from lazy2dfs.registry_client.spill import SpillArea
from lazy2dfs.registry_client.sync import SyncRegistryClient

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "BlobNotFoundError",
    "BlobReader",
    "Capability",
    "ConfigError",
    "CredentialStore",
    "Credentials",
    "Descriptor",
    "DescriptorPlatform",
    "DigestMismatchError",
    "Endpoint",
    "FetchedManifest",
    "ImageIndex",
    "ImageManifest",
    "InvalidDigestError",
    "InvalidReferenceError",
    "MalformedManifestError",
    "ManifestNotFoundError",
    "Partition",
    "Platform",
    "PlatformNotFoundError",
    "RangeError",
    "Reference",
    "RegistryClient",
    "RegistryHosts",
    "RegistryProtocolError",
    "RegistryUnavailableError",
    "ResolvedImage",
    "RetryPolicy",
    "SpillArea",
    "SyncRegistryClient",
    "UnauthorizedError",
    "UnsupportedManifestError",
    "host_platform",
    "oci_media_type",
    "parse_manifest",
    "parse_platform",
    "parse_reference",
    "select_platform",
    "sha256_digest",
    "validate_digest",
]
