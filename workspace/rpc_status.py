"""Domain errors ⇄ gRPC status codes: the one map, used by the servicers and the client."""

from __future__ import annotations

import grpc

from workspace import errors

_STATUS: dict[type[errors.WorkspaceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
}
_BY_CODE: dict[grpc.StatusCode, type[errors.WorkspaceError]] = {
    code: cls for cls, code in _STATUS.items() if cls is not errors.ConfigError
}


def status_of(exc: errors.WorkspaceError) -> grpc.StatusCode:
    """The status an error is sent with: its class's, or the nearest base class's."""
    for cls in type(exc).__mro__:
        code = _STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def from_rpc_error(exc: grpc.RpcError) -> errors.WorkspaceError:
    """Turn a gRPC error received by a client back into the domain's hierarchy."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, errors.WorkspaceError)
    return cls(details or str(code))


def describe(exc: grpc.RpcError) -> str:
    """A failed call for a log line: its status and what the other side (or gRPC, for a
    connection that failed) said, e.g. ``UNAVAILABLE: failed to connect to all
    addresses; ...``."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "error"
    return f"{name}: {details}" if details else name
