"""Errors of the registry client, typed so that callers can react without parsing messages.

Each one subclasses a domain error from :mod:`lazy2dfs.errors`, so the gRPC and CLI mappings
already know what to do with it: a malformed reference is the caller's fault, a missing blob
is "not found", a flaky registry is "unavailable" and a digest mismatch is never served.
"""

from __future__ import annotations

import socket
import ssl

import httpx

from lazy2dfs.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    causes,
    describe,
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


def _host(err: httpx.TransportError) -> str:
    try:
        return err.request.url.netloc.decode() or "the registry"
    except RuntimeError:  # raised before a request existed
        return "the registry"


def is_tls_mismatch(err: httpx.TransportError) -> bool:
    """The TLS handshake failed for a reason no retry changes: a plain HTTP server, or a
    certificate this client does not trust."""
    return any(isinstance(c, ssl.SSLError) for c in causes(err))


def explain_transport_error(err: httpx.TransportError) -> str:
    """What went wrong on the network, for a person: the cause that httpx's own (often empty)
    message hides, and what to do about it."""
    host = _host(err)
    for cause in causes(err):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"{host}'s TLS certificate is not trusted ({cause.verify_message}): add its CA"
                " to the system's trust store, or as `ca` in its hosts.toml"
            )
        if isinstance(cause, ssl.SSLError):
            if cause.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
                return (
                    f"{host} answered in plain HTTP to an HTTPS request: the registry does not"
                    " use TLS; reach it over HTTP (`--plain-http`; for the daemon"
                    f' registry.plain_http, or a hosts.toml with server = "http://{host}")'
                )
            return f"TLS handshake with {host} failed: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return f"nothing listens at {host} (connection refused): is the registry up?"
        if isinstance(cause, socket.gaierror):
            return f"{host} does not resolve: {cause.strerror}"
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot reach {host}: {cause.strerror}"
    if isinstance(err, httpx.TimeoutException):
        return f"{host} did not answer in time ({type(err).__name__})"
    return f"{host}: {describe(err)}"
