"""Liveness: a node silent for longer than the grace period is DOWN, its workspaces LOST
(or released, if they were being destroyed)."""

from __future__ import annotations

import logging

from sqlalchemy import select

from workspace.domain.states import Desired, NodeState, State
from workspace.ops import preempt
from workspace.ops.cluster_state import refresh
from workspace.ops.lifecycle import terminate_unconfirmed
from workspace.ops.unit import Env, write
from workspace.store import Node, Workspace
from workspace.store.mapping import set_reason

log = logging.getLogger("workspace.ops.liveness")


def check_liveness(env: Env) -> list[str]:
    """Mark nodes silent for longer than the grace period DOWN; their workspaces LOST."""
    now = env.clock()
    cutoff = now - env.cfg.node_grace_s
    if max(env.started_at, env.store.reachable_since()) > cutoff:
        # give agents a grace period after a service restart, and after the store's
        # database was away (their heartbeats could not be recorded meanwhile)
        return []
    down: list[str] = []
    with write(env) as u:
        for node in u.s.execute(
            select(Node).where(Node.state != NodeState.DOWN.value, Node.last_heartbeat < cutoff)
        ).scalars():
            node.state = NodeState.DOWN.value
            down.append(node.name)
            log.warning(
                "node %s is DOWN: no heartbeat for %.0f s", node.name, now - node.last_heartbeat
            )
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
                else:
                    ws.state = State.LOST.value
                    if not (ws.preemptible and ws.preempted_by):  # a victim keeps its reason
                        set_reason(
                            ws,
                            f"node {node.name} stopped reporting; the workspace was not "
                            "restarted elsewhere",
                        )
                    ws.updated_at = now
                u.changed(ws)
        refresh(env, u, u.changed_clusters())
    return down
