"""The cap on the calls a server runs or queues at once (``max_concurrent_rpcs``), kept
here instead of by grpcio, so that a call it refuses is counted.

grpcio's own ``maximum_concurrent_rpcs`` refuses a call beyond it with
RESOURCE_EXHAUSTED before any handler runs: no interceptor sees the refusal, so the
RPC metrics never counted one, and an admin sizing the limit could not tell it was hit.
The same rule, kept by the server's pieces:

* ``CountingPool``: the server's thread pool, counting the calls handed to it that have
  not finished (running or queued) — what grpcio counts, the same way (a call is in
  flight from its hand-over to the pool until that work is done, also when it ends
  before its handler runs);
* ``ConcurrencyLimit``: the first interceptor. gRPC asks it for a call's handler on its
  one polling thread, just before handing the call to the pool, so the count it reads
  then is exact. At the limit it answers with a refusal instead, RESOURCE_EXHAUSTED, and
  tells ``on_refused`` (service, method). The refusal runs on a small pool of its own
  and never reads the request: refused at once, as grpcio did, not queued behind the
  calls that filled the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

# Threads that answer refusals (each only sends a status).
REFUSAL_THREADS = 2

Refused = Callable[[str, str], None]


class CountingPool(futures.ThreadPoolExecutor):
    """A thread pool that knows how many of the calls handed to it are not done."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._count_lock:
            self._in_flight += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        with self._count_lock:
            self._in_flight -= 1


_refusals: list[futures.ThreadPoolExecutor] = []  # the process's one refusal pool, once made
_refusals_lock = threading.Lock()


def _refusal_pool() -> futures.ThreadPoolExecutor:
    """The threads that answer refusals, one pool for every server of the process."""
    with _refusals_lock:
        if not _refusals:
            _refusals.append(futures.ThreadPoolExecutor(REFUSAL_THREADS, "rpc-refusals"))
        return _refusals[0]


class _Refuse:
    """A handler's behaviour that ends the call with RESOURCE_EXHAUSTED. Declared as
    reading a stream of requests whatever the method, so gRPC reads none before it runs;
    ``experimental_thread_pool`` (grpcio's per-behaviour pool) keeps it off the server's
    pool, which is full when it is used."""

    def __init__(self, details: str) -> None:
        self.details = details
        self.experimental_thread_pool = _refusal_pool()

    def __call__(self, _requests: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.details)


class ConcurrencyLimit(grpc.ServerInterceptor):
    """Refuses a call while ``limit`` calls are in flight in ``pool`` (see the module)."""

    def __init__(self, pool: CountingPool, limit: int, on_refused: Refused | None = None) -> None:
        self.pool = pool
        self.limit = limit
        self.on_refused = on_refused
        self._refusal = grpc.stream_unary_rpc_method_handler(
            _Refuse(
                f"the server runs its limit of {limit} calls at once (max_concurrent_rpcs);"
                " try again shortly"
            )
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or self.pool.in_flight < self.limit:
            return handler  # an unknown method is UNIMPLEMENTED, as before
        if self.on_refused is not None:
            service, _, method = handler_call_details.method.strip("/").rpartition("/")
            self.on_refused(service, method)
        return self._refusal
