"""Domain errors shared by every part of lazy2dfs.

Each class says what went wrong in terms a caller can act on. The gRPC service maps them to
status codes in one place (lazy2dfs.snapshotter.service); the CLI prints their message.
Subsystems subclass these rather than inventing parallel hierarchies, so that the mapping
stays complete.
"""

from collections.abc import Iterator


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


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what lies under it: its causes and contexts, and the members of exception
    groups, outermost first. Libraries wrap the error that explains a failure (httpx wraps
    httpcore, which wraps an ``ssl.SSLError`` or an ``OSError`` in a group), and the wrapper's
    own message is often empty."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        below = current.__cause__ or current.__context__
        if below is not None:
            pending.append(below)


def describe(exc: BaseException) -> str:
    """The first message found in ``exc`` and what lies under it, for a person: never an
    exception's class name with an empty message."""
    for cause in causes(exc):
        if str(cause):
            return str(cause)
    return f"{type(exc).__name__} (no detail given)"
