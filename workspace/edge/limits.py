"""One caller cannot hold the service: a cap on the concurrent streams of each identity.

Every streaming RPC (a response stream such as ``WatchWorkspaces``, a request stream such
as ``UploadBlob``) holds a worker thread while it is open. ``StreamCap`` is a gRPC server
interceptor that counts the open streams of each caller and refuses one more than
``max_streams_per_caller`` with RESOURCE_EXHAUSTED, before the servicer runs. Unary calls
are not counted: they return.

The caller is keyed by its certificate identity (``user:alice``, ``node:n1``) under mutual
TLS, and by the admin user ``default_owner`` without TLS (``insecure = true``: every caller
is that user).

It also counts the response streams of the service's own RPCs (not gRPC's health and
reflection services, which do not end when the service stops), so that a stopping service
can wait for its watches to have sent their last status (``wait_ended``) before the
server tears its connections down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from workspace import rpc
from workspace.errors import PermissionDenied
from workspace.identity import from_pem

log = logging.getLogger("workspace.edge.limits")


def caller_key(context: grpc.ServicerContext, default_owner: str) -> str:
    """Whom a call counts against: ``user:alice`` / ``node:n1`` from the peer
    certificate, ``user:<default_owner>`` without one."""
    pem = rpc.peer_certificate(context)
    if pem is None:
        return f"user:{default_owner}"
    try:
        return from_pem(pem).principal
    except (PermissionDenied, ValueError):
        # A certificate naming no identity: the access checks refuse its calls; until
        # then it is counted by its fingerprint, never together with anyone else.
        return "cert:" + hashlib.sha256(pem).hexdigest()[:16]


class StreamCounter:
    """Open streams per key, at most ``limit`` each (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        with self._lock:
            n = self._open.get(key, 0)
            if n >= self.limit:
                return False
            self._open[key] = n + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def open_streams(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


class StreamCap(grpc.ServerInterceptor):
    """Refuse a caller's stream beyond ``limit`` open ones (RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        limit: int,
        default_owner: str,
        key: Callable[[grpc.ServicerContext, str], str] = caller_key,
    ) -> None:
        self.counter = StreamCounter(limit)
        self.default_owner = default_owner
        self.key = key
        # Open response streams of the service's own RPCs (see the module's doc).
        self._ours = 0
        self._ours_changed = threading.Condition()
        self._refusal = ""

    def refuse_new(self, message: str) -> None:
        """The service is stopping: a response stream of its own RPCs opened from now on
        ends UNAVAILABLE with ``message`` before it sends anything (a client watching
        again must not take it for the service answering again)."""
        self._refusal = message

    def open_responses(self) -> int:
        """How many response streams of the service's own RPCs are open."""
        with self._ours_changed:
            return self._ours

    def wait_ended(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until no response stream of the service's own RPCs is
        open (their handlers have returned or raised: their status is on its way out)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._ours_changed:
            while self._ours > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ours_changed.wait(left)
            return True

    def _count(self, step: int) -> None:
        with self._ours_changed:
            self._ours += step
            if self._ours == 0:
                self._ours_changed.notify_all()

    def _enter(self, context: grpc.ServicerContext, method: str) -> str:
        key = self.key(context, self.default_owner)
        if not self.counter.acquire(key):
            log.warning("%s refused for %s: %d streams open", method, key, self.counter.limit)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{method}: {key} already has {self.counter.limit} streams open "
                "(max_streams_per_caller); close some (watches, uploads) and retry",
            )
        return key

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.response_streaming:
            inner_stream = handler.stream_stream or handler.unary_stream
            assert inner_stream is not None
            ours = not handler_call_details.method.startswith("/grpc.")

            def streams_out(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if ours and self._refusal:
                    context.abort(grpc.StatusCode.UNAVAILABLE, self._refusal)
                key = self._enter(context, method)
                if ours:
                    self._count(1)
                try:
                    yield from inner_stream(request, context)
                finally:
                    self.counter.release(key)
                    if ours:
                        self._count(-1)

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(
                streams_out,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            inner_unary = handler.stream_unary
            assert inner_unary is not None

            def streams_in(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                key = self._enter(context, method)
                try:
                    return inner_unary(requests, context)
                finally:
                    self.counter.release(key)

            return grpc.stream_unary_rpc_method_handler(
                streams_in,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
