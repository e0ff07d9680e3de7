"""Domain errors ⇄ gRPC status codes: the one map, used by the servicers and the client."""

from __future__ import annotations

from typing import TypeVar

import grpc

from workspace import errors
from workspace.identity import NODE_TLS_SUFFIX, SERVICE_TLS_NAME

E = TypeVar("E", bound=errors.WorkspaceError)

# What gRPC says when the server's certificate is of the CA but not of the server the
# client expects (``rpc.channel``), and when it may not serve at all (a user's).
_WRONG_NAME = "hostname verification check failed"
_NOT_A_SERVER = "unsupported certificate purpose"
# ... and when the server's certificate is of no CA the client trusts (another site's).
_UNKNOWN_CA = "unable to get local issuer certificate"
# What gRPC says of a call this process ended itself, CANCELLED too: cancelled, its
# channel closed (``Client.close`` from another thread, to end a watch or a wait), the
# channel or the call collected, a fork. The details may carry more around them ("Stream
# removed (Channel closed!)").
_LOCAL = (
    "Locally cancelled",
    "Channel closed!",
    "Channel deallocated!",
    "Cancelled upon garbage collection!",
    "Call cancelled in fork child",
)

_STATUS: dict[type[errors.WorkspaceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
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
    """Turn a gRPC error received by a client back into the domain's hierarchy; its
    ``code`` is the status's name (a status with no class of its own, such as INTERNAL or
    UNKNOWN, is a plain WorkspaceError)."""
    code = status_code(exc)
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, errors.WorkspaceError)
    return coded(cls(details or str(code)), code)


def status_code(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status of a failed call (UNKNOWN for an error that carries none)."""
    code = exc.code() if hasattr(exc, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def cancelled_by_service(exc: grpc.RpcError) -> bool:
    """Whether the service ended the call CANCELLED, as a server that stops does to the
    calls it has not answered yet: an outage, like UNAVAILABLE, not a refusal. Not a
    call this process ended itself (a cancel, its channel closed: gRPC names those, and
    the call knows it was cancelled), which opened again would be refused or run on."""
    if status_code(exc) != grpc.StatusCode.CANCELLED:
        return False
    if hasattr(exc, "cancelled") and exc.cancelled() is True:
        return False
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return not any(said in details for said in _LOCAL)


def coded(err: E, code: grpc.StatusCode) -> E:
    """``err`` with ``code`` (the status's name) set: it was received with that status."""
    err.code = code.name
    return err


def describe(exc: grpc.RpcError) -> str:
    """A failed call for a log line: its status and what the other side (or gRPC, for a
    connection that failed) said, e.g. ``UNAVAILABLE: failed to connect to all
    addresses; ...``."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "error"
    hint = server_identity_hint(details or "")
    return f"{name}: {details}{hint}" if details else name


def server_identity_hint(details: str) -> str:
    """What to do when a TLS handshake failed because the server is not the one expected
    ("" for any other failure), for the end of the message that says so."""
    said = details.lower()
    if _WRONG_NAME in said:
        return (
            " (the server's certificate does not prove it is the server expected: the "
            f"service's carries the name {SERVICE_TLS_NAME}, node N's N{NODE_TLS_SUFFIX}; "
            "it is another identity of the site CA, or a certificate issued before that "
            "name was checked: re-issue it with `ws-admin pki issue`, or for a local site "
            "`ws-admin site down` then `site up` (docs/security.md, upgrading))"
        )
    if _NOT_A_SERVER in said:
        return (
            " (the server presented a certificate that may not serve, such as a user's: "
            "it is not the workspace service or a node)"
        )
    if _UNKNOWN_CA in said:
        return (
            " (the server's certificate is not of a CA this side trusts, the identity's "
            "ca.pem or [tls] ca_file: the identity is another site's, or the site's CA was "
            "made anew since it was issued (`ws-admin site down --purge`): get one of the "
            "site's CA (`ws-admin pki issue`); after a CA rotation, `ws-admin pki bundle` "
            "makes a ca.pem of both)"
        )
    return ""
