"""The site-events half of the Python client (``Client`` inherits it): `WatchEvents`."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import grpc

from workspace import errors
from workspace.codec import events as codec_events
from workspace.domain.events import SiteEvent
from workspace.v1 import admin_pb2_grpc

# How far before the last event seen a re-opened stream starts (seconds).
RESUME_SLACK_S = 60.0


class EventsClientMixin:
    """Needs ``_admin`` and ``_error`` from the Client."""

    _admin: admin_pb2_grpc.AdminStub
    _error: Callable[[grpc.RpcError], errors.WorkspaceError]

    def watch_events(
        self,
        since: float = 0.0,
        follow: bool = False,
        timeout_s: float | None = None,
        reconnect: bool = False,
        on_outage: Callable[[str], None] | None = None,
    ) -> Generator[SiteEvent, None, None]:
        """(admins) Site events since ``since`` (epoch seconds; 0 = the oldest kept), oldest
        first; with ``follow`` the stream stays open for new ones. Closing the iterator
        cancels the stream; ``timeout_s`` bounds it (then it just ends).

        With ``follow`` and ``reconnect``, a stream lost to an outage (the service stopping
        or restarting, the replica in use dying: UNAVAILABLE) is opened again with back-off
        (on the next replica of an address list) from the last event seen: none is given
        twice (events are told apart by id), and none committed since is missed.
        ``on_outage`` is told once when the stream is lost (why) and once when events can
        flow again ("")."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_id, start = 0, since
        backoff, away = 0.5, False
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            req = codec_events.watch_request_to_proto(start, follow)
            call: Any = self._admin.WatchEvents(req, timeout=remaining)
            try:
                for p in call:
                    if away and on_outage is not None:
                        on_outage("")
                    away, backoff = False, 0.5
                    e = codec_events.event_from_proto(p)
                    if e.id and e.id <= last_id:
                        continue  # given before the outage
                    last_id = e.id
                    # Again from a little before it: commits of other replicas may carry
                    # a slightly earlier time (their clocks), and ids weed out repeats.
                    start = max(since, e.at - RESUME_SLACK_S)
                    yield e
                return
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    return
                if not (follow and reconnect and code == grpc.StatusCode.UNAVAILABLE):
                    raise self._error(exc) from None
                if not away and on_outage is not None:
                    on_outage(exc.details() or code.name)
                away = True
            finally:
                call.cancel()
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
