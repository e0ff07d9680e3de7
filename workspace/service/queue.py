"""Waiting for capacity: a FIFO of requests, with backfill that cannot delay the head.

A request that asked to wait (wait_for_capacity_s > 0) and did not fit stays PENDING:
its rows exist (names reserved) but hold no node, capacity or address. Entries are
a single workspace or a whole cluster (placed all-or-nothing, never partly).

Backfill rule: VMs have no known end time, so we cannot predict when the head will
fit (the reservation of EASY backfilling needs that). We use a rule that is safe
without it: a later request may only be placed on nodes that the head could never
use even if they were empty (wrong networks or labels, too small, not READY). Such
nodes are useless to the head, so using them cannot delay it.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import scheduler
from workspace.config import ServiceConfig
from workspace.domain.states import Desired, State
from workspace.store import Cluster, Workspace
from workspace.v1 import admin_pb2

if TYPE_CHECKING:
    from workspace.service.core import Core

log = logging.getLogger("workspace.service.queue")


@dataclass
class Entry:
    kind: str  # "workspace" | "cluster"
    id: str
    name: str
    owner: str
    queued_at: float
    deadline: float
    ids: set[str] = field(default_factory=set)
    affinity: scheduler.Affinity = scheduler.Affinity.NONE


def entries(s: Session) -> list[Entry]:
    """Everything waiting, oldest first."""
    rows = s.execute(
        select(Workspace)
        .where(
            Workspace.state == State.PENDING.value,
            Workspace.node == "",
            Workspace.desired_state != Desired.TERMINATED.value,
        )
        .order_by(Workspace.created_at, Workspace.id)
    ).scalars()
    out: dict[str, Entry] = {}
    for w in rows:
        if w.cluster:
            e = out.get(w.cluster)
            if e is None:
                c = s.get(Cluster, w.cluster)
                e = out[w.cluster] = Entry(
                    "cluster",
                    w.cluster,
                    c.name if c else w.cluster,
                    w.owner,
                    c.created_at if c else w.created_at,
                    w.wait_deadline,
                    affinity=scheduler.Affinity[c.affinity] if c else scheduler.Affinity.NONE,
                )
            e.ids.add(w.id)
        else:
            out[w.id] = Entry(
                "workspace", w.id, w.name, w.owner, w.created_at, w.wait_deadline, {w.id}
            )
    return sorted(out.values(), key=lambda e: (e.queued_at, e.id))


def rows_of(s: Session, entry: Entry) -> list[Workspace]:
    rows = [s.get(Workspace, i) for i in sorted(entry.ids)]
    live = [w for w in rows if w is not None]
    return sorted(live, key=lambda w: (w.role, w.name))


def useless_to_head(
    s: Session, cfg: ServiceConfig, exclude: Set[str] = frozenset()
) -> tuple[set[str] | None, int]:
    """(nodes a newcomer may use, how many requests wait); (None, 0) if nothing waits."""
    waiting = [e for e in entries(s) if not (e.ids & exclude)]
    if not waiting:
        return None, 0
    return nodes_useless_to(s, cfg, rows_of(s, waiting[0])), len(waiting)


def nodes_useless_to(s: Session, cfg: ServiceConfig, rows: list[Workspace]) -> set[str]:
    """The nodes that could host none of these rows even if empty: using them for others
    cannot delay these."""
    from workspace.service.placement import could_ever_host, node_views, request_for

    shapes = distinct([request_for(w) for w in rows])
    return {n.name for n in node_views(s) if not any(could_ever_host(n, r, cfg) for r in shapes)}


def distinct(requests: list[scheduler.Request]) -> list[scheduler.Request]:
    """One request per distinct shape (members of one role are alike)."""
    seen: dict[tuple[object, ...], scheduler.Request] = {}
    for r in requests:
        key = (r.cpus, r.memory_mib, r.networks, tuple(sorted(r.requirements.items())))
        seen.setdefault(key, r)
    return list(seen.values())


class CapacityQueue:
    """Places waiting requests when capacity appears; fails them at their deadline."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def process(self) -> int:
        """One pass over the queue, oldest first; returns how many entries were placed."""
        from workspace.service import clusters
        from workspace.service.placement import NoPlacement, place_rows

        core = self.core
        with core.store.read() as s:
            waiting = entries(s)
        allowed: set[str] | None = None  # once the head is blocked: nodes useless to it
        placed = 0
        for e in waiting:
            with core.store.write() as s:
                rows = rows_of(s, e)
                if not rows or any(w.state != State.PENDING.value or w.node for w in rows):
                    continue
                now = core.clock()
                touched: list[str] = []
                if e.deadline and now > e.deadline:
                    for w in rows:
                        w.state = State.FAILED.value
                        w.reason = f"no capacity in time: {w.reason.removeprefix(_WAITING)}"
                        w.wait_deadline = 0.0
                        w.updated_at = now
                    log.warning("%s %s (%s) gave up waiting for capacity", e.kind, e.id, e.name)
                else:
                    try:
                        touched = place_rows(s, core.cfg, rows, e.affinity, allowed)
                        placed += 1
                        log.info(
                            "%s %s (%s) placed from the queue on %s",
                            e.kind,
                            e.id,
                            e.name,
                            sorted(set(touched)),
                        )
                    except NoPlacement as exc:
                        for w in rows:
                            w.reason = _WAITING + exc.message
                        if allowed is None:
                            allowed = nodes_useless_to(s, core.cfg, rows)
                        continue
                more, nodes = clusters.refresh(core, s, {w.cluster for w in rows})
                protos = core._protos(s, rows + more)
            core._publish(protos, set(touched) | nodes)
        return placed

    def list(self) -> list[admin_pb2.QueueEntry]:
        from workspace.service.convert import ts

        out: list[admin_pb2.QueueEntry] = []
        with self.core.store.read() as s:
            for pos, e in enumerate(entries(s), start=1):
                rows = rows_of(s, e)
                out.append(
                    admin_pb2.QueueEntry(
                        kind=e.kind,
                        id=e.id,
                        name=e.name,
                        owner=e.owner,
                        position=pos,
                        cpus=sum(w.cpus for w in rows),
                        memory_mib=sum(w.memory_mib for w in rows),
                        queued_at=ts(e.queued_at),
                        deadline=ts(e.deadline),
                        reason=rows[0].reason.removeprefix(_WAITING) if rows else "",
                    )
                )
        return out


_WAITING = "waiting for capacity: "
