"""A cluster's state follows from its members'; a TEARDOWN cluster that fails is torn
down: its members are destroyed and it stays FAILED, with the reason, until `ws cluster
destroy` ends it (TERMINATED)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.domain import seed
from workspace.domain.states import BOOTING, ClusterState, Desired, FailurePolicy, State
from workspace.ops.lifecycle import (
    CANCELLED,
    destroy_reason,
    node_down,
    terminate_unconfirmed,
    waiting,
)
from workspace.ops.unit import Env, UnitOfWork
from workspace.store import Cluster, Workspace
from workspace.store.mapping import member_specs, set_reason, shown_reason

log = logging.getLogger("workspace.ops.clusters")

# States in which a cluster keeps the reason it had when none is given.
_KEEPS_REASON = (ClusterState.TERMINATING, ClusterState.TERMINATED)


def current_members(
    members: Sequence[Workspace], counts: Mapping[str, int] | None
) -> list[Workspace]:
    """The members that make the cluster's state: without those a scale removed (being
    destroyed, at an index at or above their role's count), replaced (terminated, with
    a newer member of the same name) or let go (their role has its count without them:
    scaled to the members left after one was destroyed on its own). All of them if none
    would be left."""
    if counts is None:
        return list(members)
    names = {m.name for m in members if m.state != State.TERMINATED.value}
    # Each name's newest member: an older one of its name was replaced, also when the
    # newer one is TERMINATED too (put back by a scale, then destroyed on its own again).
    newest = {m.name: m for m in sorted(members, key=lambda m: (m.created_at, m.id))}
    staying = Counter(m.role for m in members if m.desired_state != Desired.TERMINATED.value)
    kept = [
        m
        for m in members
        if not (
            m.desired_state == Desired.TERMINATED.value
            and (
                seed.member_index(m.name) >= counts.get(m.role, 0)
                or (
                    m.state == State.TERMINATED.value
                    and (m.name in names or newest[m.name] is not m)
                )
                or staying[m.role] >= counts.get(m.role, 0)
            )
        )
    ]
    return kept or list(members)


def cluster_state(
    members: Sequence[Workspace],
    current: ClusterState,
    counts: Mapping[str, int] | None = None,
) -> tuple[ClusterState, str]:
    """The cluster's state (and reason) from its members' states. ``counts``: each
    role's count (the cluster's spec), to leave out the members a scale removed."""
    if current is ClusterState.TERMINATED or not members:
        return current, ""
    members = current_members(members, counts)
    states = [State(m.state) for m in members]
    if all(s is State.TERMINATED for s in states):
        return ClusterState.TERMINATED, ""
    going = [m for m in members if m.desired_state == Desired.TERMINATED.value]
    if going and len(going) == len(members):
        return ClusterState.TERMINATING, ""
    if going:
        # Members destroyed one by one (`ws destroy`, a Slurm suspend, a preemption)
        # have left the cluster; the others make its state, and its reason says who
        # left (`ws cluster scale` adds members again at the free indices).
        members = [m for m in members if m.desired_state != Desired.TERMINATED.value]
        state, reason = _state_of(members)
        names = ", ".join(sorted(m.name for m in going))
        one = len(going) == 1
        left = (
            f"{names} {'was' if one else 'were'} destroyed on {'its' if one else 'their'} "
            "own; `ws cluster scale` puts members back"
        )
        return state, f"{reason}; {left}" if reason else left
    return _state_of(members)


def torn_down(c: Cluster) -> bool:
    """A TEARDOWN cluster that failed: its members are destroyed (or being destroyed); it
    cannot be started or scaled, only destroyed."""
    return (
        c.state == ClusterState.FAILED.value
        and FailurePolicy(c.on_failure) is FailurePolicy.TEARDOWN
    )


def _culprit(members: Sequence[Workspace]) -> Workspace | None:
    """The member that makes the cluster FAILED (FAILED or LOST), if any."""
    return next((m for m in members if State(m.state) in (State.FAILED, State.LOST)), None)


def _teardown_reason(members: Sequence[Workspace], failed: str) -> str:
    """Why a TEARDOWN cluster was torn down: a member's failure, or its node's loss."""
    live = [m for m in members if m.desired_state != Desired.TERMINATED.value]
    m = _culprit(live or members)
    if m is not None and m.state == State.LOST.value:
        return f"torn down after member {m.name} was LOST with its node: {shown_reason(m)}"
    return f"torn down after a failure: {failed}"


def _state_of(members: Sequence[Workspace]) -> tuple[ClusterState, str]:
    """The state (and reason) of a cluster whose members are all staying."""
    states = [State(m.state) for m in members]
    m = _culprit(members)
    if m is not None:
        return ClusterState.FAILED, f"member {m.name} is {m.state}: {shown_reason(m)}"
    if all(s is State.PENDING for s in states):
        return ClusterState.PENDING, shown_reason(members[0])
    if all(s is State.RUNNING for s in states):
        return ClusterState.RUNNING, ""
    if all(s is State.STOPPED for s in states):
        return ClusterState.STOPPED, ""
    if any(s is State.STOPPING for s in states):
        return ClusterState.STOPPING, ""
    if any(s in BOOTING for s in states):
        return ClusterState.STARTING, ""
    # Nothing boots: some members run and others were stopped or paused on their own
    # (`ws stop MEMBER`, the lease pass of members whose lease ended): STARTING with no
    # word looked like a start under way. Say which do not run.
    idle = sorted(
        (m for m in members if m.state != State.RUNNING.value),
        key=lambda m: (m.role, seed.member_index(m.name)),
    )
    shown = ", ".join(f"{m.name} {m.state}" for m in idle[:8])
    more = f" and {len(idle) - 8} more" if len(idle) > 8 else ""
    return ClusterState.STARTING, f"partly running, nothing starting: {shown}{more}"


def members_of(s: Session, cid: str) -> list[Workspace]:
    return list(
        s.execute(
            select(Workspace)
            .where(Workspace.cluster == cid)
            .order_by(Workspace.role, Workspace.name)
        ).scalars()
    )


def destroy_member(env: Env, s: Session, m: Workspace, reason: str) -> None:
    if waiting(m):  # never placed
        reason = f"{CANCELLED}: {reason}" if reason else CANCELLED
    m.desired_state = Desired.TERMINATED.value
    m.updated_at = env.clock()
    if node_down(s, m.node):
        terminate_unconfirmed(env, s, m, reason)
    else:
        m.state = State.STOPPING.value
        set_reason(m, destroy_reason(env, m, reason))


def refresh(env: Env, u: UnitOfWork, cluster_ids: Iterable[str]) -> None:
    """Recompute the state of these clusters; apply TEARDOWN policies (the members torn
    down are added to the unit of work's changes). A torn-down cluster stays FAILED with
    its reason while its members go, and after (``ws cluster destroy`` ends it)."""
    s = u.s
    for cid in sorted({i for i in cluster_ids if i}):
        c = s.get(Cluster, cid)
        if c is None or torn_down(c):
            continue
        members = list(s.execute(select(Workspace).where(Workspace.cluster == cid)).scalars())
        counts = {m.role: m.count for m in member_specs(c)}
        state, reason = cluster_state(members, ClusterState(c.state), counts)
        if state is ClusterState.FAILED and FailurePolicy(c.on_failure) is FailurePolicy.TEARDOWN:
            reason = _teardown_reason(current_members(members, counts), reason)
            for m in members:
                if m.desired_state != Desired.TERMINATED.value and m.state != State.TERMINATED:
                    destroy_member(env, s, m, f"cluster {reason}")
                    u.changed(m)
                    u.nodes(m.node)
        if (state.value, reason) != (c.state, c.reason):
            if state is ClusterState.FAILED:
                log.warning("cluster %s (%s) FAILED: %s", cid, c.name, reason)
            kept = c.reason if state in _KEEPS_REASON else ""
            if kept and c.state == ClusterState.PENDING.value:
                kept = CANCELLED  # why it waited is no longer so: it never waits again
            c.state = state.value
            c.reason = reason or kept
            c.updated_at = env.clock()
