"""What every servicer shares: error → status mapping, the caller's identity."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from workspace import rpc_status
from workspace.errors import WorkspaceError

log = logging.getLogger("workspace.edge")
F = TypeVar("F", bound=Callable[..., Any])

# How often a stream wakes up to check that its client is still there.
STREAM_POLL_S = 5.0


def abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status of ``exc``. An unexpected exception becomes INTERNAL
    with the method and an incident id, never its text (which may show paths, SQL or
    other users' data): the text and traceback go to the log under the same id."""
    if isinstance(exc, WorkspaceError):
        if not exc.expected:
            log.error("%s failed: %s", method, exc.message)
        context.abort(rpc_status.status_of(exc), exc.message)
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed unexpectedly (incident %s)", method, incident)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} (incident {incident}); the service's log has the details",
    )


def unary(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            abort(context, exc, fn.__name__)

    return wrapper  # type: ignore[return-value]


def stream(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:
            abort(context, exc, fn.__name__)

    return wrapper  # type: ignore[return-value]


def caller(context: grpc.ServicerContext, default: str) -> str:
    """The identity of the caller: the certificate's CN under mTLS, else the default."""
    auth = context.auth_context()
    cns = auth.get("x509_common_name") if auth else None
    if cns:
        return str(cns[0].decode())
    return default
