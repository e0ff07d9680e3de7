"""The site-event journal: every flush of a session turns the changes it carries into
site events, written in the same transaction (so an event exists exactly when its change
does) and listed in ``session.info[EVENTS]`` for the unit of work to publish after commit
(ops/unit.py → Notifier.site_events).

What is seen, whoever wrote it (an operation's unit of work or a plain ``Store.write``):
workspaces created, changing state, placed on a node, queued for capacity, warned of and
given longer leases; nodes registered, changing state, removed; trust decisions (every
``trust_audit`` row). Refusals roll their transaction back, so ops/site_events.py
records them in one of their own. Who: the caller of the RPC (workspace/callctx.py), or
"system".
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from workspace import callctx
from workspace.domain.events import Kind, SiteEvent
from workspace.store.models import Audit, Node, Workspace
from workspace.store.site_events import EventRow

# session.info key: the SiteEvents the session's flushes wrote.
EVENTS = "site_events"
_RUNNING = "RUNNING"


def install(sessions: sessionmaker[Session]) -> None:
    event.listen(sessions, "before_flush", _before_flush)


def events_of(s: Session) -> list[SiteEvent]:
    """The events written in ``s`` so far (the same list keeps growing with its flushes)."""
    found: list[SiteEvent] = s.info.setdefault(EVENTS, [])
    return found


def row_of(e: SiteEvent) -> EventRow:
    return EventRow(
        at=e.at,
        kind=e.kind,
        who=e.who[:255],
        workspace_id=e.workspace_id,
        workspace_name=e.workspace_name,
        node=e.node[:255],
        cluster=e.cluster,
        subject=e.subject[:255],
        state=e.state[:16],
        previous=e.previous[:16],
        reason=e.reason[:1024],
    )


def add(s: Session, e: SiteEvent) -> None:
    """Write ``e`` in ``s``'s transaction (and list it for publication)."""
    s.add(row_of(e))
    events_of(s).append(e)


def _change(obj: Any, attr: str) -> tuple[Any, Any] | None:
    """(old, new) if ``attr`` of a loaded object changed since its last flush."""
    h = inspect(obj).attrs[attr].history
    if not h.added or not h.deleted:
        return None
    old, new = h.deleted[0], h.added[0]
    return None if old == new else (old, new)


def _before_flush(s: Session, _ctx: object, _instances: object) -> None:
    out: list[SiteEvent] = []
    who = callctx.current().who
    for obj in s.new:
        if isinstance(obj, Workspace):
            out.extend(_created(obj, who))
        elif isinstance(obj, Node):
            out.append(_node(obj, who, Kind.NODE_REGISTERED, "", "registered"))
        elif isinstance(obj, Audit):
            out.append(_trust(obj, who))
    for obj in s.dirty:
        if isinstance(obj, Workspace):
            out.extend(_workspace_changes(s, obj, who))
        elif isinstance(obj, Node) and (ch := _change(obj, "state")) is not None:
            out.append(_node(obj, who, Kind.NODE_STATE, str(ch[0] or ""), _node_why(obj)))
    for obj in s.deleted:
        if isinstance(obj, Node):
            out.append(_node(obj, who, Kind.NODE_REMOVED, obj.state, "removed"))
    for e in out:
        add(s, e)


def _ws_event(ws: Workspace, who: str, kind: Kind, **kw: Any) -> SiteEvent:
    return SiteEvent(
        at=time.time(),
        kind=kind.value,
        who=who,
        workspace_id=ws.id,
        workspace_name=ws.name,
        node=ws.node or "",
        cluster=ws.cluster or "",
        **kw,
    )


def _created(ws: Workspace, who: str) -> list[SiteEvent]:
    callctx.note(workspace=ws.id)
    out = [_ws_event(ws, who, Kind.WORKSPACE_CREATED, subject=ws.image, state=ws.state)]
    if ws.node:
        out.append(_ws_event(ws, who, Kind.WORKSPACE_PLACED, state=ws.state))
    elif ws.wait_reason:
        out.append(_ws_event(ws, who, Kind.WORKSPACE_QUEUED, reason=ws.wait_reason))
    return out


def _workspace_changes(s: Session, ws: Workspace, who: str) -> list[SiteEvent]:
    out: list[SiteEvent] = []
    node = _change(ws, "node")
    if node is not None and node[1]:
        waited = _change(ws, "wait_reason")
        from_queue = waited is not None and bool(waited[0])
        elapsed = max(0.0, ws.updated_at - ws.created_at) if from_queue else 0.0
        subject = "queue" if from_queue else ""
        out.append(_ws_event(ws, who, Kind.WORKSPACE_PLACED, subject=subject, elapsed_s=elapsed))
    elif (waited := _change(ws, "wait_reason")) is not None and waited[1] and not ws.node:
        out.append(_ws_event(ws, who, Kind.WORKSPACE_QUEUED, reason=ws.wait_reason))
    state = _change(ws, "state")
    if state is not None:
        elapsed = 0.0
        if state[1] == _RUNNING and _first_running(s, ws.id):
            elapsed = max(0.0, ws.updated_at - ws.created_at)
        out.append(
            _ws_event(
                ws,
                who,
                Kind.WORKSPACE_STATE,
                state=str(state[1]),
                previous=str(state[0] or ""),
                reason=ws.reason or ws.wait_reason or "",
                elapsed_s=elapsed,
            )
        )
    warned = _change(ws, "lease_warned")
    if warned is not None and warned[1]:
        out.append(_ws_event(ws, who, Kind.LEASE_WARNING, reason=ws.reason))
    extended = _change(ws, "lease_expires_at")
    if extended is not None and extended[0] and extended[1] > extended[0]:
        out.append(_ws_event(ws, who, Kind.LEASE_EXTENDED, reason=f"until {extended[1]:.0f}"))
    return out


def _first_running(s: Session, wid: str) -> bool:
    with s.no_autoflush:
        q = select(EventRow.id).where(
            EventRow.workspace_id == wid, EventRow.kind == Kind.WORKSPACE_STATE.value
        )
        return s.execute(q.where(EventRow.state == _RUNNING).limit(1)).first() is None


def _node_why(node: Node) -> str:
    if node.state == "DOWN":
        return f"no heartbeat since {node.last_heartbeat:.0f}"
    if node.state == "DRAINING":
        return "drained"
    return "back" if node.last_heartbeat else ""


def _node(node: Node, who: str, kind: Kind, previous: str, reason: str) -> SiteEvent:
    return SiteEvent(
        at=time.time(),
        kind=kind.value,
        who=who,
        node=node.name,
        state=node.state or "",
        previous=previous,
        reason=reason,
    )


def _trust(a: Audit, who: str) -> SiteEvent:
    source = a.source or "service"
    return SiteEvent(
        at=float(a.at or 0.0),
        kind=Kind.TRUST_DECISION.value,
        who=who if source == "service" else source,
        workspace_id=a.workspace_id or "",
        node="" if source == "service" else source.removeprefix("node:"),
        subject=a.image or "",
        state=a.verdict or "",
        reason=f"{a.action}: {a.reason}" if a.action else a.reason or "",
    )
