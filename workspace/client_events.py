"""The site-events half of the Python client (``Client`` inherits it): `WatchEvents`
(the site's, admins), `WatchWorkspaceEvents` (one workspace's) and `WatchClusterEvents`
(one cluster's)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import grpc

from workspace import client_streams, errors
from workspace.client_address import older_service
from workspace.client_args import strings
from workspace.codec import events as codec_events
from workspace.domain.events import EventFilter, SiteEvent
from workspace.v1 import (
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

# How far before the last event seen a re-opened stream starts (seconds), for a server
# that does not know ``after_id`` (older than session 38): it reads by time.
RESUME_SLACK_S = 60.0


class EventsClientMixin:
    """Needs ``_admin``, ``_workspaces``, ``_clusters``, ``_error`` and ``address`` from
    the Client."""

    address: str
    _admin: admin_pb2_grpc.AdminStub
    _workspaces: workspaces_pb2_grpc.WorkspacesStub
    _clusters: clusters_pb2_grpc.ClustersStub
    _error: Callable[[grpc.RpcError], errors.WorkspaceError]

    def watch_events(
        self,
        since: float = 0.0,
        follow: bool = False,
        timeout_s: float | None = None,
        reconnect: bool = False,
        on_outage: Callable[[str], None] | None = None,
        which: EventFilter | None = None,
        after_id: int = 0,
    ) -> Generator[SiteEvent, None, None]:
        """(admins) Site events since ``since`` (epoch seconds; 0 = the oldest kept), oldest
        first; with ``follow`` the stream stays open for new ones. Closing the iterator
        cancels the stream; ``timeout_s`` bounds it (then it just ends).

        With ``follow`` and ``reconnect``, a stream lost to an outage (the service stopping
        or restarting, the replica in use dying: UNAVAILABLE) is opened again with back-off
        (on the next replica of an address list) after the last event seen (its id, the
        order of commits): none is given twice, and none committed since is missed, even
        one whose time is older (a node's late trust records).
        ``on_outage`` is told once when the stream is lost (why) and once when events can
        flow again (""). ``which``: only the events of these kinds or families, of this
        workspace, of this node, of this cluster (its id or name; InvalidArgument for an
        unknown kind, NotFound for a cluster the caller cannot see, or a workspace or a
        node the site never had). ``after_id``: only
        the events after that one (the id of the last event a script was given: every one
        committed after it, whatever its time; ``since`` is then not used; below 0:
        InvalidArgument, from the service)."""
        if which is not None:  # one kind given as a string: taken a character at a time
            strings(which.kinds, "which.kinds")

        def open_call(start: float, after_id: int, remaining: float | None) -> Any:
            req = codec_events.watch_request_to_proto(start, follow, which, after_id)
            return self._admin.WatchEvents(req, timeout=remaining)

        events = self._events(open_call, since, follow, timeout_s, reconnect, on_outage, after_id)
        return events if which is None else self._only(events, which)

    def _only(
        self, events: Generator[SiteEvent, None, None], which: EventFilter
    ) -> Generator[SiteEvent, None, None]:
        """``events`` the filter admits. A service older than the filter's fields (a user
        who upgraded first) does not read them and sends every event: those outside are
        left out here, as the service leaves them; a cluster it was given by name cannot
        be told here, and is said to need the service upgraded."""
        try:
            for e in events:
                if which.admits(e):
                    yield e
                elif which.cluster and not e.cluster:
                    raise older_service(self.address, f"did not keep to cluster {which.cluster}")
        finally:
            events.close()

    def watch_workspace_events(
        self,
        ref: str,
        since: float = 0.0,
        follow: bool = False,
        timeout_s: float | None = None,
        reconnect: bool = False,
        on_outage: Callable[[str], None] | None = None,
        kinds: tuple[str, ...] = (),
        after_id: int = 0,
    ) -> Generator[SiteEvent, None, None]:
        """The site events of workspace ``ref`` (id or name; one the caller may see:
        NotFound otherwise), as ``watch_events`` gives the site's: what happened to it,
        by whom and why. ``kinds``: only these kinds or families."""
        kinds = tuple(strings(kinds, "kinds"))

        def open_call(start: float, after_id: int, remaining: float | None) -> Any:
            req = codec_events.subject_watch_to_proto(
                workspaces_pb2.WatchWorkspaceEventsRequest, ref, start, follow, kinds, after_id
            )
            return self._workspaces.WatchWorkspaceEvents(req, timeout=remaining)

        return self._events(open_call, since, follow, timeout_s, reconnect, on_outage, after_id)

    def watch_cluster_events(
        self,
        ref: str,
        since: float = 0.0,
        follow: bool = False,
        timeout_s: float | None = None,
        reconnect: bool = False,
        on_outage: Callable[[str], None] | None = None,
        kinds: tuple[str, ...] = (),
        after_id: int = 0,
    ) -> Generator[SiteEvent, None, None]:
        """The site events of cluster ``ref`` (id or name; one the caller may see): its
        members' (created, placed, state changes, trust decisions, ...) and its own
        (``cluster.scaled``), as ``watch_workspace_events`` gives one workspace's."""
        kinds = tuple(strings(kinds, "kinds"))

        def open_call(start: float, after_id: int, remaining: float | None) -> Any:
            req = codec_events.subject_watch_to_proto(
                clusters_pb2.WatchClusterEventsRequest, ref, start, follow, kinds, after_id
            )
            return self._clusters.WatchClusterEvents(req, timeout=remaining)

        return self._events(open_call, since, follow, timeout_s, reconnect, on_outage, after_id)

    def _events(
        self,
        open_at: Callable[[float, int, float | None], Any],
        since: float,
        follow: bool,
        timeout_s: float | None,
        reconnect: bool,
        on_outage: Callable[[str], None] | None,
        after_id: int = 0,
    ) -> Generator[SiteEvent, None, None]:
        """The events of the stream ``open_at(start, after_id, remaining_s)`` opens,
        opened again after the last one given after an outage (``reconnect``): the server
        sends every event committed after that id, whatever its time (a node's trust
        records keep the node's clock); one that does not know ``after_id`` reads from
        ``start``, a little before the last one's time, and ids weed out repeats."""
        # Sent as given: the service refuses one below 0 (it was made 0 here, and the
        # whole journal sent, silently).
        last_id, start = after_id, since

        def open_call(remaining: float | None) -> Any:
            return open_at(start, last_id, remaining)

        stream = client_streams.reopening(
            open_call, self._error, follow and reconnect, timeout_s, on_outage
        )
        try:
            for p in stream:
                e = codec_events.event_from_proto(p)
                if e.id and e.id <= last_id:
                    continue  # given before the outage
                last_id = e.id
                # For an older server: commits of other replicas may carry a slightly
                # earlier time (their clocks).
                start = max(since, e.at - RESUME_SLACK_S)
                yield e
        finally:
            stream.close()
