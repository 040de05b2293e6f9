"""Domain errors shared by every part of lazy2dfs.

Each class says what went wrong in terms a caller can act on. The gRPC service maps them to
status codes in one place (lazy2dfs.snapshotter.service); the CLI prints their message.
Subsystems subclass these rather than inventing parallel hierarchies, so that the mapping
stays complete.
"""


class Lazy2dfsError(Exception):
    """Base of every error lazy2dfs raises on purpose."""


class NotFoundError(Lazy2dfsError):
    """The named object (snapshot, blob, manifest, file) does not exist."""


class AlreadyExistsError(Lazy2dfsError):
    """An object with that name exists already."""


class InvalidArgumentError(Lazy2dfsError):
    """The caller passed something malformed: a bad filter, label, reference or field."""


class FailedPreconditionError(Lazy2dfsError):
    """The request is well formed but the object is in the wrong state for it."""


class UnavailableError(Lazy2dfsError):
    """A dependency (registry, FUSE, disk) cannot serve the request now; retrying may help."""


class IntegrityError(Lazy2dfsError):
    """Bytes did not match their digest, or a format's structure is corrupt.

    Never retried silently, never served."""
