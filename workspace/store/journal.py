"""The site-event journal: every flush of a session turns the changes it carries into
site events; just before the transaction commits they are written, in one statement, in
the same transaction (so an event exists exactly when its change does) and listed in
``session.info[EVENTS]`` for the unit of work to publish after commit (ops/unit.py →
Notifier.site_events).

A workspace created in the transaction gets one ``workspace.created`` event with what it
is at commit (its state, and its node: the placement) rather than one per step the
transaction took it through (and a ``workspace.queued`` one if it waits for capacity):
the create path writes two rows, this and its trust decision.

What is seen, whoever wrote it (an operation's unit of work or a plain ``Store.write``):
workspaces created, changing state, placed on a node, queued for capacity, warned of and
given longer leases; nodes registered, changing state, removed; networks made, changed
(their DNS servers, their range), deleted; images added, made public or private,
deleted; trust decisions (every ``trust_audit`` row).
Refusals roll their transaction back, so ops/site_events.py records them in one of their
own. Who: the caller of the RPC (workspace/callctx.py), or "system".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, event, exists, insert, inspect, or_, select
from sqlalchemy.orm import Session, sessionmaker

from workspace import callctx
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.leases import iso_time
from workspace.store.models import Audit, Image, Network, Node, UsageInterval, Workspace
from workspace.store.prepared import Prepared
from workspace.store.site_events import EventRow

log = logging.getLogger("workspace.store.journal")

# session.info keys: the SiteEvents the session's transactions wrote (published after
# commit), those still to write at commit, the workspaces created in this transaction,
# those the committing transaction wrote, and whether the session's owner publishes them.
EVENTS = "site_events"
_PENDING = "site_events_pending"
_CREATED = "site_events_created"
_COMMITTING = "site_events_committing"
# What the event of a trust decision whose workspace was never kept adds to its reason.
NOT_MADE = "the request was refused: no workspace was made"
_OWNER_PUBLISHES = "site_events_owner_publishes"
_RUNNING = "RUNNING"
_PAUSED = "PAUSED"
_INSERT_EVENT = Prepared(insert(cast(Table, EventRow.__table__)))  # built once


def install(
    sessions: sessionmaker[Session], committed: Callable[[Sequence[SiteEvent]], None]
) -> None:
    """Journal every session of ``sessions``; ``committed`` is given the events of each
    committed transaction whose session's owner does not publish them itself (a plain
    ``Store.write``: an image import, a save, a trust decision kept after a refusal),
    so that they count and wake readers as a unit of work's do."""
    event.listen(sessions, "before_flush", _before_flush)
    event.listen(sessions, "before_commit", _before_commit)
    event.listen(sessions, "after_rollback", _after_rollback)

    def after_commit(s: Session) -> None:
        written = s.info.pop(_COMMITTING, None)
        if written and not s.info.get(_OWNER_PUBLISHES):
            try:
                committed(written)
            except Exception:  # the change is committed: its publication must not undo that
                log.exception("cannot publish %d site event(s)", len(written))

    event.listen(sessions, "after_commit", after_commit)


def owner_publishes(s: Session) -> None:
    """``s``'s owner publishes the events its transactions write (a unit of work, in
    commit order under the write lock; a refusal's record), not the store."""
    s.info[_OWNER_PUBLISHES] = True


def events_of(s: Session) -> list[SiteEvent]:
    """The events ``s`` wrote (the same list grows as its transactions commit)."""
    found: list[SiteEvent] = s.info.setdefault(EVENTS, [])
    return found


def _pending(s: Session) -> list[SiteEvent | Workspace]:
    """Events to write at commit; a Workspace stands for its created event."""
    found: list[SiteEvent | Workspace] = s.info.setdefault(_PENDING, [])
    return found


def row_of(e: SiteEvent) -> dict[str, Any]:
    return {
        "at": e.at,
        "kind": e.kind,
        "who": e.who[:255],
        "workspace_id": e.workspace_id,
        "workspace_name": e.workspace_name,
        "node": e.node[:255],
        "cluster": e.cluster,
        "subject": e.subject[:255],
        "state": e.state[:16],
        "previous": e.previous[:16],
        "reason": e.reason[:1024],
    }


def add(s: Session, e: SiteEvent) -> None:
    """Write ``e`` in ``s``'s transaction, when it commits (and list it for publication)."""
    _pending(s).append(e)


def inserted(s: Session, ws: Workspace) -> None:
    """``ws`` was inserted without the ORM's flush (store/mapping.py ``insert_workspace``):
    its created event is made at commit, as a flushed new row's."""
    callctx.note(workspace=ws.id)
    s.info.setdefault(_CREATED, {})[ws.id] = (ws, callctx.current().who, time.time())
    _pending(s).append(ws)


def audited(s: Session, a: Mapping[str, Any]) -> None:
    """The trust decision ``a`` (an audit row's values) was inserted without the ORM's
    flush (store/mapping.py ``insert_audits``): its event, as a flushed one's."""
    _pending(s).append(_trust(a, callctx.current().who))


def created(s: Session) -> list[Workspace]:
    """The workspaces made in ``s``'s transaction so far (flushed)."""
    made: dict[str, tuple[Workspace, str, float]] = s.info.get(_CREATED, {})
    return [w for w, _who, _at in made.values()]


def mark(s: Session) -> tuple[int, frozenset[str]]:
    """Where ``s``'s transaction is in the journal, to ``rewind`` to after rolling back a
    SAVEPOINT begun here (ops/group_commit.py: one create of a batch refused)."""
    return len(_pending(s)), frozenset(s.info.get(_CREATED, {}))


def rewind(s: Session, at: tuple[int, frozenset[str]]) -> None:
    """Forget the events noted since ``mark`` returned ``at`` (their changes were rolled back)."""
    del _pending(s)[at[0] :]
    made: dict[str, Any] = s.info.get(_CREATED, {})
    for wid in set(made) - at[1]:
        del made[wid]


def _before_commit(s: Session) -> None:
    if s.in_nested_transaction():  # a SAVEPOINT: the events are written with the transaction
        return
    if not s.info.get(_PENDING) and not (s.new or s.dirty or s.deleted):
        return
    s.flush()  # the last changes become events too
    pending = s.info.pop(_PENDING, [])
    created: dict[str, tuple[Workspace, str, float]] = s.info.pop(_CREATED, {})
    out: list[SiteEvent] = []
    for item in pending:
        if isinstance(item, Workspace):
            _ws, who, at = created[item.id]
            out.extend(_created(item, who, at))
        elif (
            item.kind == Kind.TRUST_DECISION.value and item.workspace_id and not item.workspace_name
        ):
            out.append(_named(s, item, created))
        else:
            out.append(item)
    if out:
        _INSERT_EVENT.write(s.connection(), [row_of(e) for e in out])
        events_of(s).extend(out)
        s.info.setdefault(_COMMITTING, []).extend(out)


def _named(
    s: Session, e: SiteEvent, created: Mapping[str, tuple[Workspace, str, float]]
) -> SiteEvent:
    """A trust decision's event with its workspace's name, when its audit row has none
    (not a create's): the row made in this transaction, else the stored one."""
    made = created.get(e.workspace_id)
    ws = made[0] if made is not None else s.get(Workspace, e.workspace_id)
    if ws is not None:
        return dataclasses.replace(e, workspace_name=ws.name)
    return e


def _after_rollback(s: Session) -> None:
    if s.in_nested_transaction():  # a SAVEPOINT: its creator rewinds (``rewind``)
        return
    s.info.pop(_PENDING, None)
    s.info.pop(_CREATED, None)
    s.info.pop(_COMMITTING, None)


def _change(obj: Any, attr: str) -> tuple[Any, Any] | None:
    """(old, new) if ``attr`` of a loaded object changed since its last flush."""
    h = inspect(obj).attrs[attr].history
    if not h.added or not h.deleted:
        return None
    old, new = h.deleted[0], h.added[0]
    return None if old == new else (old, new)


def _before_flush(s: Session, _ctx: object, _instances: object) -> None:
    out = _pending(s)
    who = callctx.current().who
    created: dict[str, tuple[Workspace, str, float]] = s.info.setdefault(_CREATED, {})
    for obj in s.new:
        if isinstance(obj, Workspace):
            callctx.note(workspace=obj.id)
            created[obj.id] = (obj, who, time.time())
            out.append(obj)  # its event is made at commit, from what it is then
        elif isinstance(obj, Node):
            out.append(_node(obj, who, Kind.NODE_REGISTERED, "", "registered"))
        elif isinstance(obj, Audit):
            out.append(_trust({k: getattr(obj, k) for k in _TRUST_FIELDS}, who))
        elif isinstance(obj, Network):
            out.append(_network(obj, who, Kind.NETWORK_CREATED, _network_about(obj)))
        elif isinstance(obj, Image):
            out.append(_image(obj, who, Kind.IMAGE_ADDED, _image_about(obj)))
    for obj in s.dirty:
        if isinstance(obj, Workspace):
            if obj.id not in created:
                out.extend(_workspace_changes(s, obj, who))
        elif isinstance(obj, Node) and (ch := _change(obj, "state")) is not None:
            out.append(_node(obj, who, Kind.NODE_STATE, str(ch[0] or ""), _node_why(obj)))
        elif isinstance(obj, Network) and (why := _network_changes(obj)):
            out.append(_network(obj, who, Kind.NETWORK_UPDATED, why))
        elif isinstance(obj, Image) and (ch := _change(obj, "public")) is not None:
            why = f"{_visibility(ch[0])} -> {_visibility(ch[1])}"
            out.append(_image(obj, who, Kind.IMAGE_UPDATED, why))
    for obj in s.deleted:
        if isinstance(obj, Node):
            out.append(_node(obj, who, Kind.NODE_REMOVED, obj.state, "removed"))
        elif isinstance(obj, Network):
            out.append(_network(obj, who, Kind.NETWORK_DELETED, _network_about(obj)))
        elif isinstance(obj, Image):
            out.append(_image(obj, who, Kind.IMAGE_DELETED, _image_about(obj)))


def workspace_event(ws: Workspace, who: str, kind: Kind, at: float = 0.0, **kw: Any) -> SiteEvent:
    """An event of ``ws`` (its id, name, node and cluster) by ``who``, at ``at`` (0: now);
    ``kw``: the rest (subject, state, reason, ...)."""
    return SiteEvent(
        at=at or time.time(),
        kind=kind.value,
        who=who,
        workspace_id=ws.id,
        workspace_name=ws.name,
        node=ws.node or "",
        cluster=ws.cluster or "",
        **kw,
    )


def _created(ws: Workspace, who: str, at: float) -> list[SiteEvent]:
    """A workspace made in this transaction, as it is at commit: its node (if any) is
    where it was placed."""
    out = [workspace_event(ws, who, Kind.WORKSPACE_CREATED, at, subject=ws.image, state=ws.state)]
    if not ws.node and ws.wait_reason:
        out.append(workspace_event(ws, who, Kind.WORKSPACE_QUEUED, at, reason=ws.wait_reason))
    return out


def _workspace_changes(s: Session, ws: Workspace, who: str) -> list[SiteEvent]:
    out: list[SiteEvent] = []
    node = _change(ws, "node")
    if node is not None and node[1]:
        waited = _change(ws, "wait_reason")
        from_queue = waited is not None and bool(waited[0])
        elapsed = max(0.0, ws.updated_at - ws.created_at) if from_queue else 0.0
        subject = "queue" if from_queue else ""
        out.append(
            workspace_event(ws, who, Kind.WORKSPACE_PLACED, subject=subject, elapsed_s=elapsed)
        )
    elif (waited := _change(ws, "wait_reason")) is not None and waited[1] and not ws.node:
        out.append(workspace_event(ws, who, Kind.WORKSPACE_QUEUED, reason=ws.wait_reason))
    state = _change(ws, "state")
    if state is not None:
        elapsed = 0.0
        if state[1] == _RUNNING and _first_running(s, ws.id):
            elapsed = max(0.0, ws.updated_at - ws.created_at)
        out.append(
            workspace_event(
                ws,
                who,
                Kind.WORKSPACE_STATE,
                state=str(state[1]),
                previous=str(state[0] or ""),
                reason=ws.reason or ws.wait_reason or "",
                elapsed_s=elapsed,
            )
        )
    if (asked := _pause_or_resume(ws, who, state)) is not None:
        out.append(asked)
    rebooted = _change(ws, "reboot_count")
    if rebooted is not None and (rebooted[1] or 0) > (rebooted[0] or 0):
        reason = f"reboot {rebooted[1]} of the workspace asked"
        out.append(workspace_event(ws, who, Kind.WORKSPACE_REBOOT, reason=reason))
    warned = _change(ws, "lease_warned")
    if warned is not None and warned[1]:
        out.append(workspace_event(ws, who, Kind.LEASE_WARNING, reason=ws.reason))
    extended = _change(ws, "lease_expires_at")
    if extended is not None and extended[0] and extended[1] > extended[0]:
        out.append(
            workspace_event(ws, who, Kind.LEASE_EXTENDED, reason=f"until {iso_time(extended[1])}")
        )
    return out


# A pause or resume asked (desired RUNNING <-> PAUSED while the state stays): what its
# event says, by (new desired, state shown). A state the other way round is the opposite
# operation asked before and not reported done yet, which this one withdrew.
_ASKED = {
    (_PAUSED, _RUNNING): (Kind.WORKSPACE_PAUSE, "pause of the workspace asked"),
    (_RUNNING, _PAUSED): (Kind.WORKSPACE_RESUME, "resume of the workspace asked"),
    (_PAUSED, _PAUSED): (
        Kind.WORKSPACE_PAUSE,
        "pause asked: it withdrew the resume asked before, which its node had not "
        "reported done (still PAUSED); shown RUNNING until its node reports it paused "
        "(it may have resumed it already)",
    ),
    (_RUNNING, _RUNNING): (
        Kind.WORKSPACE_RESUME,
        "resume asked: it withdrew the pause asked before, which its node had not "
        "reported done (still RUNNING); shown PAUSED until its node reports it running "
        "(it may have paused it already)",
    ),
}


def _pause_or_resume(ws: Workspace, who: str, state: tuple[Any, Any] | None) -> SiteEvent | None:
    """The event of a pause or a resume ``who`` asked of ``ws`` (None: neither), by the
    state before it (``state``: its change, if any). Its state does not change until its
    node reports, so no workspace.state event of the caller's tells it; a stop, start or
    destroy changes the state and has one. A resume that withdrew a pause shows PAUSED,
    a pause that withdrew a resume RUNNING (domain/states.py): both events, the state's
    and this one."""
    desired = _change(ws, "desired_state")
    if desired is None or {desired[0], desired[1]} != {_RUNNING, _PAUSED}:
        return None
    before = str(state[0]) if state is not None else ws.state
    asked = _ASKED.get((str(desired[1]), before))
    if asked is None:
        return None
    return workspace_event(ws, who, asked[0], reason=asked[1])


def _first_running(s: Session, wid: str) -> bool:
    """Whether workspace ``wid`` was never RUNNING before: no kept event says so, and
    no usage interval of it with cpus, closed (it left RUNNING: the one this change
    opens is open). The events alone forgot a workspace older than
    ``event_retention``: its start weeks later was counted as its create → running."""
    with s.no_autoflush:
        ran = exists().where(
            EventRow.workspace_id == wid,
            EventRow.kind == Kind.WORKSPACE_STATE.value,
            EventRow.state == _RUNNING,
        )
        used = exists().where(
            UsageInterval.workspace_id == wid,
            UsageInterval.ended_at != 0,
            UsageInterval.cpus > 0,
        )
        return not s.execute(select(or_(ran, used))).scalar()


def _node_why(node: Node) -> str:
    if node.state == "DOWN":
        return node.reason or f"no heartbeat since {iso_time(node.last_heartbeat)}"
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


def _network(net: Network, who: str, kind: Kind, reason: str) -> SiteEvent:
    return SiteEvent(at=time.time(), kind=kind.value, who=who, subject=net.name, reason=reason)


def _network_about(net: Network) -> str:
    vlan = f", VLAN {net.vlan}" if net.vlan else ""
    return f"{net.subnet}, range {net.range_start}-{net.range_end}, bridge {net.bridge}{vlan}"


def _network_changes(net: Network) -> str:
    """What changed in a network row, as `ws-admin network set` names it."""
    out = []
    dns = _change(net, "dns")
    if dns is not None:
        out.append(
            f"DNS servers {', '.join(dns[0] or ()) or 'none'} -> {', '.join(dns[1]) or 'none'}"
        )
    start, end = _change(net, "range_start"), _change(net, "range_end")
    if start is not None or end is not None:
        old = f"{start[0] if start else net.range_start}-{end[0] if end else net.range_end}"
        out.append(f"range {old} -> {net.range_start}-{net.range_end}")
    return "; ".join(out)


def _image(img: Image, who: str, kind: Kind, reason: str) -> SiteEvent:
    return SiteEvent(at=time.time(), kind=kind.value, who=who, subject=img.name, reason=reason)


def _visibility(public: object) -> str:
    return "public" if public else "private"


def _image_about(img: Image) -> str:
    """``project physics, private; partitions root (cow), data (blank)``."""
    where = f"project {img.project}" if img.project else "no project"
    parts = ", ".join(
        f"{p.get('name')} ({str(p.get('mode', '')).lower()})" for p in img.partitions or ()
    )
    kernel = "; a kernel" if img.kernel_digest else ""
    return f"{where}, {_visibility(img.public)}; partitions {parts or 'none'}{kernel}"


_TRUST_FIELDS = (
    "source",
    "at",
    "workspace_id",
    "workspace_name",
    "image",
    "verdict",
    "action",
    "reason",
)


def _trust(a: Mapping[str, Any], who: str) -> SiteEvent:
    """The event of the audit row ``a``. A create's row names the workspace asked for;
    one with that name and no id is of a create refused after its decision (ops/trust.py
    ``_unmade``): its event names the request, with no id, which would name nothing
    (``ws-admin events --workspace`` of it: NOT_FOUND), and says no workspace was made."""
    source = a.get("source") or "service"
    action, reason = a.get("action"), a.get("reason") or ""
    wid, name = a.get("workspace_id") or "", a.get("workspace_name") or ""
    if name and not wid:
        reason = f"{reason}; {NOT_MADE}" if reason else NOT_MADE
    return SiteEvent(
        at=float(a.get("at") or 0.0),
        kind=Kind.TRUST_DECISION.value,
        who=who if source == "service" else source,
        workspace_id=wid,
        workspace_name=name,
        node="" if source == "service" else source.removeprefix("node:"),
        subject=a.get("image") or "",
        state=a.get("verdict") or "",
        reason=f"{action}: {reason}" if action else reason,
    )
