"""Preemption: a normal request that does not fit takes the capacity of the fewest
preemptible workspaces, in the transaction that places it (docs/design/preemption.md).

* ``place_preempting`` (ops/admission.py, ops/queue.py, after free capacity failed):
  the scheduler's plan (workspace/scheduler/preempt.py) on the same nodes; the request
  is placed and claimed (``place_rows`` with the plan) while each victim keeps its
  claim until it is TERMINATED (then released once, as for any workspace: the node is
  over-claimed for the grace period, so nothing else can be placed in the gap), and
  the victim is marked: ``preempted_by`` the member placed on its node, reason
  PREEMPTED, and either desired STOPPED with its grace as the stop timeout (a RUNNING
  one: ACPI, then forced by the agent after the grace) or desired TERMINATED at once
  (one not running: nothing to shut down gracefully).
* ``held`` (ops/reports.py ``orders``): a workspace is not sent to its node while any
  workspace it preempted is not TERMINATED, so the node never runs both.
* ``observed`` / ``terminated`` (ops/reports.py): a victim the node reports STOPPED (or
  FAILED) is to be destroyed; it ends TERMINATED with its PREEMPTED reason, and the
  last one to go sends its preemptor's node new orders. Victims keep their addresses
  until TERMINATED; the preemptor got fresh ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from workspace import callctx, scheduler
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.states import Desired, State
from workspace.log import about, about_node
from workspace.ops.placement import (
    MAX_ORDERS_FULL,
    NoPlacement,
    OrdersFull,
    node_views,
    place_rows,
    request_for,
)
from workspace.ops.unit import Env, UnitOfWork, note_changed
from workspace.scheduler.preempt import Plan, Victim, plan
from workspace.store import Workspace, journal
from workspace.store.mapping import set_reason

log = logging.getLogger("workspace.ops.preempt")

PREEMPTED = "PREEMPTED"
# ``preempted_by`` of a normal workspace placed by preemption: its order is held back
# from its node while any workspace preempted there is not TERMINATED (a normal
# workspace is never a victim: the column is free for this mark).
HELD = "+held"
# States of a held workspace: placed, not yet sent (or its node DOWN since).
_HOLDABLE = (State.SCHEDULED.value, State.LOST.value)
# States in which a victim runs a guest that may shut down on ACPI.
_GRACEFUL = (State.RUNNING.value, State.STOPPING.value)


def _told(by: Workspace, victim: Workspace) -> bool:
    """Whether the victim's owner may know whose workspace took its place: their own, or
    their project's."""
    return by.owner == victim.owner or bool(by.project and by.project == victim.project)


def _mark_victim(env: Env, s: Session, by: Workspace, w: Workspace, who: str, now: float) -> None:
    """Workspace ``w`` gives its place to ``by``: on its way out, and its event by ``who``."""
    w.preempted_by = by.id
    grace = grace_s(env.cfg.preempt_grace_s, w)
    if w.state in _GRACEFUL and w.desired_state != Desired.PAUSED.value:
        w.desired_state = Desired.STOPPED.value
        w.stop_timeout_s = max(grace, 1)
        w.force_stop = grace == 0
    else:  # nothing to shut down gracefully: destroyed at once
        w.desired_state = Desired.TERMINATED.value
        w.force_stop = True
    w.state = State.STOPPING.value
    why = reason_for(by, w)
    set_reason(w, why)
    w.updated_at = now
    note_changed(s, w)
    journal.add(
        s,
        SiteEvent(
            at=now,
            kind=Kind.WORKSPACE_PREEMPTED.value,
            who=who,
            workspace_id=w.id,
            workspace_name=w.name,
            node=w.node,
            cluster=w.cluster or "",
            subject=w.owner,
            state=State.STOPPING.value,
            reason=why,
        ),
    )
    log.warning(
        "workspace %s (%s of %s) on node %s preempted for %s (%s of %s); grace %d s",
        w.id,
        w.name,
        w.owner,
        w.node,
        by.id,
        by.name,
        by.owner,
        grace if w.desired_state == Desired.STOPPED.value else 0,
        extra=about(w.id, w.node),
    )


def reason_for(by: Workspace, victim: Workspace) -> str:
    """What the victim shows: whose workspace took its place if that one is its owner's
    or its project's; else not (another tenant's user, name and id are not the victim's
    to see; the log and the admin's `preemption` event name it)."""
    if _told(by, victim):
        return f"{PREEMPTED}: its capacity was given to {by.owner}'s {by.name} ({by.id})"
    return f"{PREEMPTED}: its capacity was given to a normal workspace of another project"


def grace_s(cfg_grace: int, ws: Workspace) -> int:
    """The victim's own grace if set (>= 0), else the site's ``preempt_grace_s``."""
    own = ws.preempt_grace_s if ws.preempt_grace_s is not None else -1
    return own if own >= 0 else cfg_grace


def is_victim(ws: Workspace) -> bool:
    return bool(ws.preemptible and ws.preempted_by)


def _victim(w: Workspace, rank: int = 0) -> Victim:
    return Victim(
        w.id,
        w.node,
        w.claimed_cpus,
        w.claimed_memory_mib,
        w.claimed_disk_mbps or 0,
        w.claimed_net_mbps or 0,
        rank,
    )


def _going(nodes: Sequence[str]) -> ColumnElement[bool]:
    """Preempted workspaces on ``nodes`` that may still run there: not TERMINATED yet,
    or TERMINATED while their node was DOWN and still holding their claim until the node
    says the VM is gone (ops/lifecycle.py ``terminate_unconfirmed``)."""
    return and_(
        Workspace.node.in_(nodes),
        Workspace.preemptible.is_(True),
        Workspace.preempted_by != "",
        or_(
            Workspace.state != State.TERMINATED.value,
            Workspace.claimed_cpus > 0,
            Workspace.claimed_memory_mib > 0,
        ),
    )


def in_flight(s: Session, nodes: Iterable[str]) -> list[Victim]:
    """Workspaces preempted on ``nodes`` and not gone yet (they still hold their claims)."""
    names = sorted(set(nodes))
    if not names:
        return []
    return [_victim(w) for w in s.execute(select(Workspace).where(_going(names))).scalars()]


def candidates(s: Session, nodes: Iterable[str]) -> tuple[list[Victim], dict[str, Workspace]]:
    """The preemptible workspaces on ``nodes`` holding a claim and not already
    preempted, as victims (newest first: the least work lost), and their rows."""
    names = sorted(set(nodes))
    if not names:
        return [], {}
    rows = list(
        s.execute(
            select(Workspace)
            .where(
                Workspace.preemptible.is_(True),
                Workspace.node.in_(names),
                Workspace.preempted_by == "",
                Workspace.state != State.TERMINATED.value,
                Workspace.desired_state != Desired.TERMINATED.value,
            )
            .order_by(Workspace.created_at.desc(), Workspace.id)
        ).scalars()
    )
    rows = [w for w in rows if w.claimed_cpus or w.claimed_memory_mib]
    return [_victim(w, rank) for rank, w in enumerate(rows)], {w.id: w for w in rows}


def place_preempting(
    env: Env,
    s: Session,
    rows: Sequence[Workspace],
    affinity: scheduler.Affinity,
    withheld: Mapping[str, str] | None,
) -> list[str] | None:
    """Place ``rows`` (which did not fit on free capacity) by preempting the fewest
    preemptible workspaces, on nodes but the ``withheld`` ones; returns the nodes touched,
    or None (nothing changed) if the request is itself preemptible, or even preemption
    cannot make all of it fit. A plan that fails a check of ``place_rows`` (addresses,
    order size) is None too."""
    if not rows or any(w.preemptible for w in rows):
        return None
    nodes = node_views(s)
    if withheld:
        nodes = [n for n in nodes if n.name not in withheld]
    victims, by_id = candidates(s, (n.name for n in nodes))
    going = in_flight(s, (n.name for n in nodes))
    if not victims and not going:
        return None
    requests = [request_for(w) for w in rows]
    for _ in range(MAX_ORDERS_FULL + 1):
        found = plan(nodes, victims, requests, env.cfg.scheduler, affinity, going)
        if found is None:
            return None
        # The request first (it may still be refused: addresses, order size; then
        # nothing has changed), then the victims marked: the same transaction. The
        # victims keep their claims until they are TERMINATED (released once, as any
        # workspace's): the node is over-claimed meanwhile, so nothing else is placed
        # in the gap.
        try:
            touched = place_rows(
                s, env.cfg, rows, affinity, withheld, plan=found.placement, now=env.clock()
            )
        except OrdersFull as exc:  # raised before anything was claimed
            if not exc.node or not any(n.name == exc.node for n in nodes):
                log.info("preemption for %s abandoned: %s", rows[0].name, exc.message)
                return None
            # That node's orders have no room for them; another node's victims may do.
            nodes = [n for n in nodes if n.name != exc.node]
            continue
        except NoPlacement as exc:  # raised before anything was claimed
            log.info("preemption for %s abandoned: %s", rows[0].name, exc.message)
            return None
        _apply(env, s, rows, found, by_id)
        return touched
    log.info(
        "preemption for %s abandoned: %d nodes' orders are full", rows[0].name, MAX_ORDERS_FULL
    )
    return None


def _apply(
    env: Env, s: Session, rows: Sequence[Workspace], found: Plan, by_id: dict[str, Workspace]
) -> None:
    now = env.clock()
    who = callctx.current().who
    pairs = [
        (rows[i], by_id[v.id])
        for i, displaced in sorted(found.displaced.items())
        for v in displaced
    ]
    lines = [f"{w.owner}'s {w.name} ({w.id}) on {w.node}" for _by, w in pairs]
    # A victim of another tenant's request is preempted by the service, as its events say
    # (their ``who``): that tenant is not the victim's to know (``reason_for``). So its
    # changes are flushed apart, in the service's own context, which the journal's
    # events of them take; the caller's own changes are flushed before.
    s.flush()
    with callctx.system():
        for by, w in pairs:
            if not _told(by, w):
                _mark_victim(env, s, by, w, callctx.SYSTEM, now)
        s.flush()
    for by, w in pairs:
        if _told(by, w):
            _mark_victim(env, s, by, w, who, now)
    # Every member on a node where workspaces are on their way out waits for them all.
    waiting = {v.node for v in found.victims} | set(found.pending_nodes)
    s.flush()
    going = Counter(v.node for v in in_flight(s, waiting))
    for by in rows:
        if by.node in waiting:
            by.preempted_by = HELD
            set_reason(by, waiting_reason(going[by.node]))
    if found.pending_nodes:
        lines.append(
            "and the capacity of workspace(s) already stopping on "
            + ", ".join(sorted(found.pending_nodes))
        )
    first = rows[0]
    journal.add(
        s,
        SiteEvent(
            at=now,
            kind=Kind.PREEMPTION.value,
            who=who,
            workspace_id=first.id,
            workspace_name=first.name,
            node=",".join(sorted({r.node for r in rows})),
            cluster=first.cluster or "",
            subject=first.owner,
            state=str(len(found.victims)),
            reason=_did_not_fit(first.cluster or "", first.name, first.owner)
            + "; preempted "
            + "; ".join(lines),
        ),
    )


def _did_not_fit(cluster: str, name: str, owner: str) -> str:
    """The head of a ``preemption`` event's reason: what needed the capacity."""
    what = f"cluster member(s) of {cluster}" if cluster else name
    return f"{what} of {owner} did not fit on free capacity"


def as_users_see(e: SiteEvent) -> SiteEvent:
    """A site event as a user following a workspace or cluster sees it: a ``preemption``
    says how many workspaces it took (its ``state``), not whose: the victims' owners,
    names and ids are other tenants' (admins, and the log, see them whole)."""
    if e.kind != Kind.PREEMPTION.value:
        return e
    took = f"preempted {e.state} workspace(s)"
    return replace(e, reason=f"{_did_not_fit(e.cluster, e.workspace_name, e.subject)}; {took}")


def waiting_reason(count: int) -> str:
    return f"waiting for {count} preempted workspace(s) to stop"


def going_count(s: Session, node: str) -> int:
    q = select(func.count()).select_from(Workspace).where(_going([node]))
    return int(s.execute(q).scalar_one())


def held(s: Session, node: str) -> set[str]:
    """The workspaces on ``node`` whose orders are held back: placed by preemption
    (``HELD``), not sent yet, while any workspace preempted there is not TERMINATED."""
    if not going_count(s, node):
        return set()
    q = select(Workspace.id).where(
        Workspace.node == node,
        Workspace.preempted_by == HELD,
        Workspace.state.in_(_HOLDABLE),
    )
    return set(s.execute(q).scalars())


def observed(env: Env, u: UnitOfWork, ws: Workspace, new: State | None) -> bool:
    """A report about a preempted workspace (not TERMINATED by it); True if handled
    here: a victim keeps its PREEMPTED reason, and one STOPPED (or FAILED) is destroyed."""
    if not is_victim(ws) or ws.state == State.TERMINATED.value:
        return False
    if new in (State.STOPPED, State.FAILED) and ws.desired_state != Desired.TERMINATED.value:
        ws.desired_state = Desired.TERMINATED.value
        ws.force_stop = True
        ws.state = State.STOPPING.value
        ws.updated_at = env.clock()
        u.changed(ws)
        u.nodes(ws.node)
        log.info(
            "preempted workspace %s (%s) stopped on node %s",
            ws.id,
            ws.name,
            ws.node,
            extra=about(ws.id, ws.node),
        )
        return True
    if new is not None and new.value != ws.state:
        ws.state = new.value
        ws.updated_at = env.clock()
        u.changed(ws)
    return True


def end_reason(ws: Workspace, default: str) -> str:
    """What a workspace shows once TERMINATED: a victim keeps its PREEMPTED reason."""
    return ws.reason if is_victim(ws) and ws.reason.startswith(PREEMPTED) else default


def terminated(u: UnitOfWork, ws: Workspace) -> None:
    """A victim is gone: when no workspace preempted on its node is left, the workspaces
    held there lose their mark and the node is sent its orders again (now with them);
    else their reason counts what is left."""
    if not is_victim(ws):
        return
    u.s.flush()
    left = going_count(u.s, ws.node)
    q = select(Workspace).where(Workspace.node == ws.node, Workspace.preempted_by == HELD)
    for by in u.s.execute(q).scalars():
        if left:
            if by.state in _HOLDABLE and by.reason.startswith("waiting for"):
                set_reason(by, waiting_reason(left))
                u.changed(by)
            continue
        by.preempted_by = ""
        if by.reason.startswith("waiting for"):
            set_reason(by, "")
        u.changed(by)
    if not left:
        u.nodes(ws.node)
        log.info(
            "the last workspace preempted on node %s is gone: held orders go out",
            ws.node,
            extra=about_node(ws.node),
        )
