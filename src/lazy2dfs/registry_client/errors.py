"""Errors of the registry client, typed so that callers can react without parsing messages.

Each one subclasses a domain error from :mod:`lazy2dfs.errors`, so the gRPC and CLI mappings
already know what to do with it: a malformed reference is the caller's fault, a missing blob
is "not found", a flaky registry is "unavailable" and a digest mismatch is never served.
"""

from __future__ import annotations

from lazy2dfs.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)


class InvalidReferenceError(InvalidArgumentError):
    """An image reference (or a 2DFS partition suffix in it) is malformed."""


class ConfigError(InvalidArgumentError):
    """A hosts.toml, Docker config.json or credential helper answer cannot be used."""


class UnsupportedManifestError(InvalidArgumentError):
    """A manifest of a media type this client does not understand (e.g. Docker schema 1)."""


class RangeError(InvalidArgumentError):
    """A byte range outside the blob, empty, or refused by the registry as unsatisfiable."""


class ManifestNotFoundError(NotFoundError):
    """No registry endpoint has the manifest (tag or digest)."""


class BlobNotFoundError(NotFoundError):
    """No registry endpoint has the blob."""


class PlatformNotFoundError(NotFoundError):
    """An image index has no manifest for the wanted platform."""


class UnauthorizedError(FailedPreconditionError):
    """The registry refused the credentials we have (or that we have none)."""


class RegistryUnavailableError(UnavailableError):
    """The registry did not answer usefully within the retry budget."""


class RegistryProtocolError(UnavailableError):
    """The registry answered something that breaks the distribution or HTTP protocol."""


class MalformedManifestError(IntegrityError):
    """Manifest bytes (already matching their digest) that are not a valid manifest or index."""
