"""OCI distribution client: references (with 2DFS partitions), manifests, verified blobs,
range reads with registry fallbacks, auth, containerd hosts.toml mirrors, and push."""

from lazy2dfs.registry_client.blobs import BlobReader
from lazy2dfs.registry_client.client import FetchedManifest, RegistryClient, ResolvedImage
from lazy2dfs.registry_client.credentials import Credentials, CredentialStore
from lazy2dfs.registry_client.digest import sha256_digest, validate_digest
from lazy2dfs.registry_client.errors import (
    BlobNotFoundError,
    ConfigError,
    DigestMismatchError,
    InvalidDigestError,
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
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    DescriptorPlatform,
    ImageIndex,
    ImageManifest,
    parse_manifest,
    select_platform,
)
from lazy2dfs.registry_client.platform import Platform, host_platform, parse_platform
from lazy2dfs.registry_client.reference import Partition, Reference, parse_reference
from lazy2dfs.registry_client.retry import RetryPolicy
from lazy2dfs.registry_client.sync import SyncRegistryClient

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
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
    "SyncRegistryClient",
    "UnauthorizedError",
    "UnsupportedManifestError",
    "host_platform",
    "parse_manifest",
    "parse_platform",
    "parse_reference",
    "select_platform",
    "sha256_digest",
    "validate_digest",
]
