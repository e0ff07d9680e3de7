"""Server streams the Python client opens again after an outage (``Client.watch``,
``Client.watch_events``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import grpc

from workspace import errors, rpc_status
from workspace.client_args import grpc_timeout

# Back-off between attempts to open a lost stream again (seconds): first, and at most.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
# The ends of a stream a reconnecting one is opened again after (the back-off keeps a
# refusal at open time from spinning: it doubles while no message comes).
REOPENED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def reopening(
    open_call: Callable[[float | None], Any],
    error: Callable[[grpc.RpcError], errors.WorkspaceError],
    reconnect: bool,
    timeout_s: float | None = None,
    on_outage: Callable[[str], None] | None = None,
    again_after_end: bool = False,
) -> Generator[Any, None, None]:
    """The messages of the stream ``open_call(remaining timeout)`` opens.

    With ``reconnect``, a stream lost to an outage (UNAVAILABLE: the service stopping or
    restarting, a replica dying, or CANCELLED by a server that stopped before its
    status was sent; the channel moves on to the next one of an address
    list) or that the service ended or refused with RESOURCE_EXHAUSTED (a watch that fell
    behind, "re-open it"; too many of the caller's streams open, or calls) is opened
    again with back-off, and with ``again_after_end`` also one that ended. A revoked
    or refused identity (UNAUTHENTICATED, PERMISSION_DENIED) is never retried.
    ``open_call`` is called anew each time (it may start where the last stream
    stopped). ``on_outage`` is told once when the stream is lost (why) and once when
    messages flow again (""). ``timeout_s`` bounds the whole; reaching it just ends (one
    past MAX_SECONDS, ``float("inf")`` too, bounds nothing). Another error is raised as
    ``error`` makes it."""
    timeout_s = grpc_timeout(timeout_s)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    backoff, away = FIRST_BACKOFF_S, False
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        call = open_call(remaining)
        try:
            for message in call:
                if away and on_outage is not None:
                    on_outage("")
                backoff, away = FIRST_BACKOFF_S, False
                yield message
            if not (reconnect and again_after_end):
                return
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                return
            lost = code in REOPENED or rpc_status.cancelled_by_service(exc)
            if not (reconnect and lost):
                raise error(exc) from None
            if not away and on_outage is not None:
                cut = code == grpc.StatusCode.CANCELLED
                on_outage(exc.details() or ("it stopped during the call" if cut else code.name))
            away = True
        finally:
            call.cancel()
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
