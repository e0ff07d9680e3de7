"""Site events out on a gRPC stream, for Admin.WatchEvents (the site's),
Workspaces.WatchWorkspaceEvents (one workspace's) and Clusters.WatchClusterEvents (one
cluster's): the journal as ops/site_events.py reads and follows it, each event as the
proto."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from workspace.codec import events as codec_events
from workspace.domain.events import SiteEvent
from workspace.edge import auth
from workspace.edge.calls import stopping
from workspace.identity import Identity
from workspace.ops.unit import Env
from workspace.v1 import admin_pb2

# The events to send, given a ``gone()`` that says when to stop following.
Events = Callable[[Callable[[], bool]], Iterator[SiteEvent]]


def events_out(
    env: Env,
    checker: auth.Authenticator,
    who: Identity,
    context: grpc.ServicerContext,
    follow: bool,
    events: Events,
) -> Iterator[admin_pb2.SiteEvent]:
    """``events`` until they end, the caller goes or its certificate is revoked
    (UNAUTHENTICATED); a followed stream the service's stop ends is UNAVAILABLE (watch
    again)."""

    def gone() -> bool:
        checker.check_revoked(who)
        return not context.is_active()

    for e in events(gone):
        yield codec_events.event_to_proto(e)
    if follow and env.notifier.closed and context.is_active():
        raise stopping()
