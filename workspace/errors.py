"""The error hierarchy shared by every process.

Domain errors know nothing of the transport: ``workspace/rpc_status.py`` maps each to
exactly one gRPC status, at the edges (servicers and the client).
``expected`` errors are the caller's fault: they are logged without a traceback.
Messages say what was wrong and, where it helps, what to do.
"""

from __future__ import annotations


class WorkspaceError(Exception):
    """Base of all errors this project raises on purpose.

    ``code`` is the name of the gRPC status an error was received with ("NOT_FOUND",
    "DEADLINE_EXCEEDED", "INTERNAL", ...) when a client made it from one
    (``workspace/rpc_status.py``), None for an error raised where it happened."""

    expected = False
    code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(WorkspaceError):
    expected = True


class BadArgument(InvalidArgument, ValueError, TypeError):
    """A ``Client`` method was given an argument of the wrong type or out of range
    (``workspace/client_args.py``): raised before anything is sent; still a ValueError and
    a TypeError for callers that caught those."""

    expected = True


class ClientClosed(WorkspaceError, ValueError):
    """A ``Client`` call made after the client was closed (``close()``, the end of its
    ``with`` block; in a program that shares one client between threads, another thread
    may have closed it), or one under way that the close ended. ``code`` is None for a
    call refused before it was sent, ``"CANCELLED"`` for one the close cut short. Still
    a ValueError, which gRPC raised for the first before."""

    expected = True


class NotFound(WorkspaceError):
    expected = True


class AlreadyExists(WorkspaceError):
    expected = True


class FailedPrecondition(WorkspaceError):
    expected = True


class ResourceExhausted(WorkspaceError):
    expected = True


class PermissionDenied(WorkspaceError):
    expected = True


class AccessDenied(PermissionDenied):
    """Refused by who the caller is, before any operation ran: a role the RPC needs, a
    node certificate acting for another node. Logged by the service (edge/calls.py),
    as an unauthenticated call is: a probe of the site's edges is worth an admin's
    look, where a user's refusal on their own objects is not."""


class Unauthenticated(PermissionDenied):
    """No usable certificate: none, or one the site revoked. Sent as UNAUTHENTICATED by
    the servicers (edge/calls.py ``abort``); a client reads it back as any other code."""


class Unavailable(WorkspaceError):
    """A service or node could not be reached; worth retrying."""


# How the service's Unavailable begins while its database cannot be reached (store/
# engines.py ``away``): an agent tells a site's outage from a replica's by it.
DATABASE_AWAY = "the service's database cannot be reached"


class Stopping(Unavailable):
    """The service is stopping (a stream it ends): nothing went wrong, retry elsewhere."""

    expected = True


class ConfigError(WorkspaceError):
    """A configuration file or value is wrong; raised at start-up."""

    expected = True


class DriverError(WorkspaceError):
    """A hypervisor driver operation failed."""


class ImageError(InvalidArgument):
    """An image or blob is malformed, unsafe or does not match its digest."""
