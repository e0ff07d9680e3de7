"""Liveness: a node silent for longer than the grace period is DOWN, and so is a node
whose certificate the site revoked; either way its workspaces are LOST (or released, if
they were being destroyed), as docs/design/control-plane.md says of a silent node."""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.domain.leases import iso_time
from workspace.domain.model import WorkspaceView
from workspace.domain.states import NOT_MOVED, Desired, NodeState, State
from workspace.log import about_node
from workspace.ops import node_refusals, preempt
from workspace.ops.cluster_state import refresh
from workspace.ops.lifecycle import terminate_unconfirmed
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store import Node, Workspace
from workspace.store.mapping import set_reason

log = logging.getLogger("workspace.ops.liveness")


def check_liveness(env: Env, judging_since: float = 0.0) -> list[str]:
    """Mark nodes silent for longer than the grace period DOWN; their workspaces LOST.
    ``judging_since``: when this process began to judge (a replica: when it last took
    the leader lock); the heartbeats before it were not its to see."""
    now = env.clock()
    cutoff = now - env.cfg.node_grace_s
    if _heard_since(env, judging_since) > cutoff:
        # give agents a grace period after a service restart, after the store's database
        # was away (their heartbeats could not be recorded meanwhile), and after this
        # replica became the leader: the database may have been away without its noticing
        # (no request reached it), as when it restarted and the lock came back to another
        return []
    down: list[str] = []
    with write(env) as u:
        if _heard_since(env, judging_since) > cutoff:
            return []  # this very write waited for another replica's (Store.write)
        for node in u.s.execute(
            select(Node).where(Node.state != NodeState.DOWN.value, Node.last_heartbeat < cutoff)
        ).scalars():
            silent = f"no heartbeat since {iso_time(node.last_heartbeat)}"
            when, why = node_refusals.last(env, node.name, node.cert_serial)
            if when > cutoff:  # its agent calls, and is refused (ops/reports.py)
                silent = why
            lost = _down(env, u, node, silent, f"node {node.name} stopped reporting")
            log.warning(
                "node %s is DOWN: %s%s", node.name, silent, _lost(lost), extra=about_node(node.name)
            )
            down.append(node.name)
        refresh(env, u, u.changed_clusters())
    return down


def _heard_since(env: Env, judging_since: float = 0.0) -> float:
    """Since when agents' heartbeats could be recorded and seen here: this service's
    start, its database's return (or the end of a stalled write), ``judging_since``."""
    return max(env.started_at, env.store.reachable_since(), judging_since)


def silence_s(env: Env) -> float:
    """How long a node may be silent before its workspaces' views say so
    (``with_node_silence``): three heartbeats missed, and half of the grace period (a
    heartbeat late under load is not news)."""
    return max(3.0 * env.cfg.heartbeat_interval_s, env.cfg.node_grace_s / 2)


def with_node_silence(env: Env, s: Session, views: Sequence[WorkspaceView]) -> list[WorkspaceView]:
    """``views``, each whose node has been silent for longer than ``silence_s`` (and is
    not DOWN yet: then they are LOST) marked with when it last reported. Nothing is
    judged within that time of this service's start or its database's return, when
    heartbeats could not be recorded (as ``check_liveness``)."""
    now = env.clock()
    cutoff = now - silence_s(env)
    nodes = {v.node for v in views if v.node and v.state is not State.TERMINATED}
    if not nodes or _heard_since(env) > cutoff:
        return list(views)
    rows = s.execute(
        select(Node.name, Node.last_heartbeat).where(
            Node.name.in_(sorted(nodes)),
            Node.state != NodeState.DOWN.value,
            Node.last_heartbeat < cutoff,
        )
    ).all()
    silent = {name: float(heard) for name, heard in rows}
    if not silent:
        return list(views)
    return [
        replace(v, node_silent_since=silent[v.node])
        if v.node in silent and v.state is not State.TERMINATED
        else v
        for v in views
    ]


def check_revocations(env: Env, revoked: Set[int], superseded: Set[int] = frozenset()) -> list[str]:
    """Mark DOWN every node whose bound certificate is ``revoked`` (the serials of this
    replica's CRL), its workspaces LOST, and record the revocation on the node: from then
    on every replica refuses that certificate for it (ops/reports.py ``check_bound``),
    whatever its own copy of the CRL says. Returns the nodes marked.

    A certificate revoked as ``superseded`` (a new one of the same node replaced it: the
    local site's `site up` renewing it while the agent is stopped) is refused as any
    revoked one, but does not make its node lost: its agent registers with the new one,
    and an agent that does not is DOWN once silent for the grace period, as at any
    restart. Taken for lost, its workspaces went LOST and a cluster of them with
    ``on_failure = teardown`` was destroyed at an agent's restart."""
    marked: list[str] = []
    if not revoked:
        return marked
    with env.store.read() as s:
        bound = s.execute(
            select(Node.name, Node.cert_serial).where(Node.cert_serial != "", ~Node.cert_revoked)
        ).all()
    hit = {
        name: serial
        for name, serial in bound
        if int(serial, 16) in revoked and int(serial, 16) not in superseded
    }
    if not hit:
        return marked
    with write(env) as u:
        for node in u.s.execute(select(Node).where(Node.name.in_(sorted(hit)))).scalars():
            if node.cert_revoked or node.cert_serial != hit[node.name]:
                continue  # marked meanwhile, or another certificate took the name
            why = f"its certificate (serial 0x{node.cert_serial}) was revoked"
            node.cert_revoked = True
            lost = _down(env, u, node, why, f"the certificate of node {node.name} was revoked")
            log.warning(
                "node %s is DOWN: %s%s", node.name, why, _lost(lost), extra=about_node(node.name)
            )
            marked.append(node.name)
        refresh(env, u, u.changed_clusters())
    return marked


# LOST workspaces a node's DOWN line names at most (the rest are counted).
LOST_NAMED = 20


def _lost(names: Sequence[str]) -> str:
    """What a node's DOWN line says of the workspaces it made LOST ("" for none)."""
    if not names:
        return ""
    more = f" and {len(names) - LOST_NAMED} more" if len(names) > LOST_NAMED else ""
    return f"; workspace(s) LOST: {', '.join(names[:LOST_NAMED])}{more}"


def _down(env: Env, u: UnitOfWork, node: Node, why: str, lost: str) -> list[str]:
    """``node`` DOWN because ``why``; its workspaces LOST (``lost``: what happened to the
    node, as their reason says it), or released if they were being destroyed. Its order
    stream wakes (a revoked node's then ends: UNAUTHENTICATED). Returns the workspaces
    made LOST now, as "id (name)" (as every line about a workspace names it) in the
    order of their names, for the log to name them."""
    made_lost: list[tuple[str, str]] = []
    now = env.clock()
    node.state = NodeState.DOWN.value
    node.reason = why
    u.nodes(node.name)
    for ws in u.s.execute(
        select(Workspace).where(
            Workspace.node == node.name, Workspace.state != State.TERMINATED.value
        )
    ).scalars():
        if ws.desired_state == Desired.TERMINATED.value:
            terminate_unconfirmed(
                env, u.s, ws, preempt.end_reason(ws, "destroyed (its node went down)")
            )
            preempt.terminated(u, ws)
        elif ws.state != State.LOST.value:
            ws.state = State.LOST.value
            if not (ws.preemptible and ws.preempted_by):  # a victim keeps its reason
                set_reason(ws, lost + NOT_MOVED)
            ws.updated_at = now
            made_lost.append((ws.name, ws.id))
        else:
            continue
        u.changed(ws)
    return [f"{wid} ({name})" for name, wid in sorted(made_lost)]
