"""The site-events half of the Python client (``Client`` inherits it): `WatchEvents`."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import grpc

from workspace import errors
from workspace.codec import events as codec_events
from workspace.domain.events import SiteEvent
from workspace.v1 import admin_pb2_grpc


class EventsClientMixin:
    """Needs ``_admin`` and ``_error`` from the Client."""

    _admin: admin_pb2_grpc.AdminStub
    _error: Callable[[grpc.RpcError], errors.WorkspaceError]

    def watch_events(
        self, since: float = 0.0, follow: bool = False, timeout_s: float | None = None
    ) -> Generator[SiteEvent, None, None]:
        """(admins) Site events since ``since`` (epoch seconds; 0 = the oldest kept), oldest
        first; with ``follow`` the stream stays open for new ones. Closing the iterator
        cancels the stream; ``timeout_s`` bounds it (then it just ends)."""
        req = codec_events.watch_request_to_proto(since, follow)
        call: Any = self._admin.WatchEvents(req, timeout=timeout_s)
        try:
            for p in call:
                yield codec_events.event_from_proto(p)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout_s is not None:
                return
            raise self._error(exc) from None
        finally:
            call.cancel()
