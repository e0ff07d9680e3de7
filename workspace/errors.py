"""The error hierarchy shared by every process.

Each error maps to exactly one gRPC status at the edge (see ``grpc_status``).
``expected`` errors are the caller's fault: they are logged without a traceback.
Messages say what was wrong and, where it helps, what to do.
"""

from __future__ import annotations

import grpc


class WorkspaceError(Exception):
    """Base of all errors this project raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    expected = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(WorkspaceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    expected = True


class NotFound(WorkspaceError):
    code = grpc.StatusCode.NOT_FOUND
    expected = True


class AlreadyExists(WorkspaceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    expected = True


class FailedPrecondition(WorkspaceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    expected = True


class ResourceExhausted(WorkspaceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    expected = True


class PermissionDenied(WorkspaceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    expected = True


class Unavailable(WorkspaceError):
    code = grpc.StatusCode.UNAVAILABLE


class ConfigError(WorkspaceError):
    """A configuration file or value is wrong; raised at start-up."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    expected = True


class DriverError(WorkspaceError):
    """A hypervisor driver operation failed."""


class ImageError(InvalidArgument):
    """An image or blob is malformed, unsafe or does not match its digest."""


_BY_CODE: dict[grpc.StatusCode, type[WorkspaceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        PermissionDenied,
        Unavailable,
    )
}


def from_rpc_error(exc: grpc.RpcError) -> WorkspaceError:
    """Turn a gRPC error received by a client back into our hierarchy."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, WorkspaceError)
    err = cls(details or str(code))
    if cls is WorkspaceError and code == grpc.StatusCode.UNAVAILABLE:
        err = Unavailable(details or "service unavailable")
    return err
