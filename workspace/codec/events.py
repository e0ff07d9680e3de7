"""Site events: domain ⇄ workspace.v1 (Admin.WatchEvents, Workspaces.WatchWorkspaceEvents,
Clusters.WatchClusterEvents)."""

from __future__ import annotations

from typing import TypeVar

from workspace.codec.v1 import epoch, ts
from workspace.domain.events import EventFilter, SiteEvent
from workspace.errors import InvalidArgument
from workspace.v1 import admin_pb2, clusters_pb2, workspaces_pb2


def watch_request_to_proto(
    since: float, follow: bool, which: EventFilter | None = None, after_id: int = 0
) -> admin_pb2.WatchEventsRequest:
    which = which or EventFilter()
    req = admin_pb2.WatchEventsRequest(
        follow=follow,
        after_id=after_id,
        kinds=list(which.kinds),
        workspace=which.workspace,
        node=which.node,
        cluster=which.cluster,
    )
    if since:
        req.since.CopyFrom(ts(since))
    return req


def watch_request_from_proto(
    req: admin_pb2.WatchEventsRequest,
) -> tuple[float, bool, EventFilter, int]:
    """(since, follow, which, after_id); an unset ``since`` is 0 (from the oldest kept),
    an unset ``after_id`` 0 (from ``since``)."""
    since = epoch(req.since, "since") if req.HasField("since") else 0.0
    which = EventFilter(tuple(req.kinds), req.workspace, req.node, req.cluster)
    return since, req.follow, which, _after_id(req.after_id)


def _after_id(after_id: int) -> int:
    """An event id to resume after (0: unset); InvalidArgument below 0 (it was taken
    for 0, the stream sent from the start, as no other negative count of the API is)."""
    if after_id < 0:
        raise InvalidArgument(f"after_id must not be negative (0: not set), got {after_id}")
    return after_id


# One workspace's or one cluster's: the same fields.
SubjectWatch = workspaces_pb2.WatchWorkspaceEventsRequest | clusters_pb2.WatchClusterEventsRequest


def subject_watch_from_proto(
    req: SubjectWatch,
) -> tuple[str, float, bool, tuple[str, ...], int]:
    """(the workspace's or cluster's id or name, since, follow, kinds, after_id)."""
    since = epoch(req.since, "since") if req.HasField("since") else 0.0
    return req.id, since, req.follow, tuple(req.kinds), _after_id(req.after_id)


W = TypeVar("W", workspaces_pb2.WatchWorkspaceEventsRequest, clusters_pb2.WatchClusterEventsRequest)


def subject_watch_to_proto(
    cls: type[W],
    ref: str,
    since: float,
    follow: bool,
    kinds: tuple[str, ...] = (),
    after_id: int = 0,
) -> W:
    """A ``cls`` (one workspace's or one cluster's watch) of ``ref``."""
    req = cls(id=ref, follow=follow, kinds=list(kinds), after_id=after_id)
    if since:
        req.since.CopyFrom(ts(since))
    return req


def event_to_proto(e: SiteEvent) -> admin_pb2.SiteEvent:
    return admin_pb2.SiteEvent(
        id=e.id,
        time=ts(e.at),
        kind=e.kind,
        who=e.who,
        workspace_id=e.workspace_id,
        workspace_name=e.workspace_name,
        node=e.node,
        cluster=e.cluster,
        subject=e.subject,
        state=e.state,
        previous=e.previous,
        reason=e.reason,
    )


def event_from_proto(p: admin_pb2.SiteEvent) -> SiteEvent:
    return SiteEvent(
        id=p.id,
        at=epoch(p.time),
        kind=p.kind,
        who=p.who,
        workspace_id=p.workspace_id,
        workspace_name=p.workspace_name,
        node=p.node,
        cluster=p.cluster,
        subject=p.subject,
        state=p.state,
        previous=p.previous,
        reason=p.reason,
    )
