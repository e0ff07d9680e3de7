"""Admission: place a request now, queue it, or refuse it — without delaying the queue.

A request that asked to wait (wait_for_capacity_s > 0) and did not fit stays PENDING:
its rows exist (names reserved) but hold no node, capacity or address, and their
``wait_reason`` says why. Entries are a single workspace or a whole cluster (placed
all-or-nothing, never partly).

Backfill rule: VMs have no known end time, so we cannot predict when the head will
fit (the reservation of EASY backfilling needs that). We use a rule that is safe
without it: a later request may only be placed on nodes that the head could never
use even if they were empty (wrong networks or labels, too small, not READY). Such
nodes are useless to the head, so using them cannot delay it.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import scheduler
from workspace.config import ServiceConfig
from workspace.domain.states import Desired, State
from workspace.errors import ResourceExhausted
from workspace.ops.placement import (
    NoPlacement,
    could_ever_host,
    distinct,
    never_placed,
    node_views,
    place_rows,
    request_for,
)
from workspace.ops.preempt import place_preempting
from workspace.ops.unit import Env
from workspace.store import Cluster, Workspace
from workspace.store.mapping import flushed, set_waiting
from workspace.store.prepared import Prepared


@dataclass
class Entry:
    """One waiting request: a workspace, or every waiting member of a cluster."""

    kind: str  # "workspace" | "cluster"
    id: str
    name: str
    owner: str
    queued_at: float
    deadline: float
    ids: set[str] = field(default_factory=set)
    affinity: scheduler.Affinity = scheduler.Affinity.NONE


# The waiting requests' query, built once: every create asks it.
_WAITING = Prepared(
    select(
        Workspace.id,
        Workspace.cluster,
        Workspace.name,
        Workspace.owner,
        Workspace.created_at,
        Workspace.wait_deadline,
    )
    .where(
        Workspace.state == State.PENDING.value,
        Workspace.node == "",
        Workspace.desired_state != Desired.TERMINATED.value,
    )
    .order_by(Workspace.created_at, Workspace.id)
)


def entries(s: Session, exclude: Set[str] = frozenset()) -> list[Entry]:
    """Everything waiting, oldest first, but the workspaces ``exclude`` names. Plain
    columns, not ORM entities: every create asks."""
    out: dict[str, Entry] = {}
    for wid, cluster, name, owner, created_at, wait_deadline in _WAITING.rows(flushed(s)):
        if wid in exclude:
            continue
        if cluster:
            e = out.get(cluster)
            if e is None:
                c = s.get(Cluster, cluster)
                e = out[cluster] = Entry(
                    "cluster",
                    cluster,
                    c.name if c else cluster,
                    owner,
                    c.created_at if c else created_at,
                    wait_deadline,
                    affinity=scheduler.Affinity[c.affinity] if c else scheduler.Affinity.NONE,
                )
            e.ids.add(wid)
        else:
            out[wid] = Entry("workspace", wid, name, owner, created_at, wait_deadline, {wid})
    return sorted(out.values(), key=lambda e: (e.queued_at, e.id))


def rows_of(s: Session, entry: Entry) -> list[Workspace]:
    rows = [s.get(Workspace, i) for i in sorted(entry.ids)]
    live = [w for w in rows if w is not None]
    return sorted(live, key=lambda w: (w.role, w.name))


# s.info key: the requests waiting, read once per transaction that keeps them (a batch
# of creates, ops/group_commit.py): its creates add none, but one that queues
# (``admit`` forgets them then), and a SAVEPOINT rolled back forgets them.
WAITING_KEY = "admission.waiting"


def keep_waiting(s: Session) -> None:
    s.info.setdefault(WAITING_KEY, None)


def forget_waiting(s: Session) -> None:
    if WAITING_KEY in s.info:
        s.info[WAITING_KEY] = None


def useless_to_head(
    s: Session, cfg: ServiceConfig, exclude: Set[str] = frozenset()
) -> tuple[set[str] | None, int]:
    """(nodes a newcomer may use, how many requests wait); (None, 0) if nothing waits."""
    kept: list[Entry] | None = s.info.get(WAITING_KEY)
    if kept is None:
        kept = entries(s, exclude)
        if WAITING_KEY in s.info:
            s.info[WAITING_KEY] = kept
    if not kept:
        return None, 0
    # A cluster some of whose members are excluded is excluded whole.
    clusters = {w.cluster for w in (s.get(Workspace, i) for i in exclude) if w and w.cluster}
    waiting = [
        e for e in kept if not (e.ids & exclude) and (e.kind != "cluster" or e.id not in clusters)
    ]
    if not waiting:
        return None, 0
    return nodes_useless_to(s, cfg, rows_of(s, waiting[0])), len(waiting)


def nodes_useless_to(s: Session, cfg: ServiceConfig, rows: list[Workspace]) -> set[str]:
    """The nodes that could host none of these rows even if empty: using them for others
    cannot delay these."""
    shapes = distinct([request_for(w) for w in rows])
    return {n.name for n in node_views(s) if not any(could_ever_host(n, r, cfg) for r in shapes)}


def pinned_nodes(
    s: Session, rows: list[Workspace], affinity: scheduler.Affinity, allowed: set[str] | None
) -> set[str] | None:
    """``allowed`` narrowed for new members of a cluster that already has placed ones (a
    `ws cluster scale` grow): with HARD affinity they go to the node the others are on,
    with HARD_ANTI to nodes none of the others is on. The scheduler sees only the group
    it places, so the members already placed are kept in by the nodes it may use."""
    cluster = rows[0].cluster if rows else ""
    if not cluster or affinity not in (scheduler.Affinity.HARD, scheduler.Affinity.HARD_ANTI):
        return allowed
    mine = {w.id for w in rows}
    taken = {
        node
        for wid, node in s.execute(
            select(Workspace.id, Workspace.node).where(
                Workspace.cluster == cluster,
                Workspace.node != "",
                Workspace.desired_state != Desired.TERMINATED.value,
            )
        )
        if wid not in mine
    }
    if not taken:
        return allowed
    if affinity is scheduler.Affinity.HARD:
        within = taken
    else:
        within = {n.name for n in node_views(s)} - taken
    return within if allowed is None else allowed & within


def admit(
    env: Env,
    s: Session,
    rows: list[Workspace],
    affinity: scheduler.Affinity,
    wait_s: int,
    label: str,
) -> list[str]:
    """Place ``rows`` now (returns the nodes touched), or queue them (wait_s > 0; returns
    []), or raise RESOURCE_EXHAUSTED.

    Requests already waiting keep their turn: a newcomer may only use nodes that the
    oldest waiting request could never use, so it cannot delay it.
    """
    allowed, ahead = useless_to_head(s, env.cfg, exclude={w.id for w in rows})
    allowed = pinned_nodes(s, rows, affinity, allowed)
    try:
        return place_rows(s, env.cfg, rows, affinity, allowed)
    except NoPlacement as exc:
        preempted = place_preempting(env, s, rows, affinity, allowed)  # ops/preempt.py
        if preempted is not None:
            return preempted
        why = exc.message
        if ahead:
            why += f" (without delaying the {ahead} request(s) waiting for capacity)"
        if wait_s <= 0:
            raise ResourceExhausted(f"cannot place {label}: {why}") from exc
        never = never_placed(s, env.cfg, rows)
        if never is not None:
            raise ResourceExhausted(
                f"cannot place {label}: {why}; not queued: even on an empty, READY node of "
                f"the site, {never}, so waiting would not help"
            ) from exc
        deadline = env.clock() + wait_s
        for w in rows:
            set_waiting(w, why, deadline)
        forget_waiting(s)  # these wait now
        return []
