"""Admission: place a request now, queue it, or refuse it — without delaying the queue.

A request that asked to wait (wait_for_capacity_s > 0) and did not fit stays PENDING:
its rows exist (names reserved) but hold no node, capacity or address, and their
``wait_reason`` says why. Entries are a single workspace or a whole cluster (placed
all-or-nothing, never partly).

Backfill rule (docs/design/scheduler.md, "The capacity queue"): VMs have no known end
time, so we cannot reserve the head of the queue a *time* as EASY backfilling does. It
holds the node(s) it will be placed on instead (``scheduler.reserve``: for a workspace
the node closest to fitting it, for a cluster the fewest such nodes that hold it whole),
recomputed at every create and queue pass; later requests may use every other node.
Nothing new is placed on a held node, so its free capacity only grows: the head is
never delayed by a later request.

The preemptible class yields to the normal one (docs/design/preemption.md), in the queue
too: a preemptible head holds its node(s) only against preemptible newcomers. A normal
newcomer is kept off the nodes of the oldest waiting *normal* request instead (which a
preemptible newcomer respects as well), so a normal request is never held back by a
preemptible one, and the first normal waiter keeps the protection a head has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from workspace import scheduler
from workspace.config import ServiceConfig
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Desired, State
from workspace.errors import ResourceExhausted
from workspace.ops.placement import (
    NoPlacement,
    addresses_short,
    never_placed,
    node_views,
    place_rows,
    request_for,
)
from workspace.ops.preempt import place_preempting
from workspace.ops.unit import Env
from workspace.store import Cluster, Workspace
from workspace.store.mapping import WAITING, flushed, set_waiting
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
    preemptible: bool = False


def holders(waiting: Sequence[Entry]) -> list[Entry]:
    """The entries of ``waiting`` (oldest first) that hold nodes: the head, and the first
    normal entry if the head is preemptible (a preemptible head holds nothing against
    normal requests)."""
    if not waiting:
        return []
    first_normal = next((e for e in waiting if not e.preemptible), None)
    if first_normal is None or first_normal is waiting[0]:
        return [waiting[0]]
    return [waiting[0], first_normal]


def holds_against(entry: Entry, preemptible: bool) -> bool:
    """Whether the nodes ``entry`` holds (as one of ``holders``) keep a newcomer of that
    class off: a preemptible entry's only keep preemptible ones off."""
    return preemptible or not entry.preemptible


# The waiting requests' query, built once: every create asks it.
_WAITING = Prepared(
    select(
        Workspace.id,
        Workspace.cluster,
        Workspace.name,
        Workspace.owner,
        Workspace.created_at,
        Workspace.wait_deadline,
        Workspace.preemptible,
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
    for wid, cluster, name, owner, created_at, wait_deadline, pre in _WAITING.rows(flushed(s)):
        if wid in exclude:
            continue
        if cluster:
            e = out.get(cluster)
            if e is None:
                c = s.get(Cluster, cluster)
                # Queued when its first waiting member was made: a grow's members when
                # the grow was asked (the cluster's own creation put a grow ahead of
                # every request that had queued since).
                e = out[cluster] = Entry(
                    "cluster",
                    cluster,
                    c.name if c else cluster,
                    owner,
                    created_at,
                    wait_deadline,
                    affinity=scheduler.Affinity[c.affinity] if c else scheduler.Affinity.NONE,
                    preemptible=bool(pre),
                )
            e.queued_at = min(e.queued_at, created_at)
            e.ids.add(wid)
        else:
            e = Entry("workspace", wid, name, owner, created_at, wait_deadline, {wid})
            e.preemptible = bool(pre)
            out[wid] = e
    return sorted(out.values(), key=lambda e: (e.queued_at, e.id))


def position(s: Session, ref: str) -> int:
    """Where the request ``ref`` (a workspace's id, or a cluster's) belongs to stands in
    the queue (1: the head); 0 if it does not wait."""
    for pos, e in enumerate(entries(s), start=1):
        if ref in e.ids or ref == e.id:
            return pos
    return 0


def with_position(s: Session, ref: str, why: str) -> str:
    """What a waiting request shows: why it waits (its ``wait_reason``), with its place in
    the queue (not who else waits)."""
    return placed_reason(position(s, ref), why)


def placed_reason(pos: int, why: str) -> str:
    """The reason of a request waiting at ``pos`` (0: not known) because ``why``."""
    return f"waiting for capacity ({ordinal(pos)} in the queue): {why}" if pos else WAITING + why


def positioned(s: Session, views: Sequence[WorkspaceView]) -> list[WorkspaceView]:
    """``views`` with the waiting ones' reasons saying their place, as GetWorkspace shows
    them (the queue read once, and only if one waits): what a watcher is sent."""
    if not any(v.waiting for v in views):
        return list(views)
    at = {i: pos for pos, e in enumerate(entries(s), start=1) for i in e.ids}
    return [
        replace(v, reason=placed_reason(at.get(v.id, 0), v.reason.removeprefix(WAITING)))
        if v.waiting and v.reason.startswith(WAITING)
        else v
        for v in views
    ]


def ordinal(n: int) -> str:
    """1 → "1st", 2 → "2nd", 11 → "11th", 23 → "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rows_of(
    s: Session, entry: Entry, found: Mapping[str, Workspace] | None = None
) -> list[Workspace]:
    """``entry``'s rows (``found``: those read already, by id; else each read)."""
    rows = [found.get(i) if found is not None else s.get(Workspace, i) for i in sorted(entry.ids)]
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
    s.info.pop(HELD_KEY, None)


# s.info key, with WAITING_KEY: the holders' held nodes, {entry id: nodes} (a batch's
# creates place nothing on them, and only shrink the other nodes' free capacity: they
# stay held; a normal create in the batch may use a preemptible head's node, which
# then keeps it from the batch's preemptible creates a little longer than needed).
HELD_KEY = "admission.held"

# Why a node held for the head is not used (counted with the filters' reasons).
HELD = "are held for the request waiting at the head of the capacity queue"
# ... for the oldest normal request waiting behind a preemptible head.
HELD_NORMAL = "are held for the oldest normal request waiting in the capacity queue"


def head_holds(
    s: Session, cfg: ServiceConfig, exclude: Set[str] = frozenset(), preemptible: bool = False
) -> dict[str, str]:
    """The nodes a newcomer (``preemptible`` or not) may not use, each with why: those the
    head of the queue holds, or for a normal newcomer behind a preemptible head those the
    oldest normal waiting request holds (``holders``; none if nothing waits).
    ``exclude``: workspaces (being admitted) that do not count."""
    kept: list[Entry] | None = s.info.get(WAITING_KEY)
    if kept is None:
        kept = entries(s, exclude)
        if WAITING_KEY in s.info:
            s.info[WAITING_KEY] = kept
    if not kept:
        return {}
    # A cluster some of whose members are excluded is excluded whole.
    clusters = {w.cluster for w in (s.get(Workspace, i) for i in exclude) if w and w.cluster}
    waiting = [
        e for e in kept if not (e.ids & exclude) and (e.kind != "cluster" or e.id not in clusters)
    ]
    out: dict[str, str] = {}
    for pos, entry in enumerate(holders(waiting)):
        if not holds_against(entry, preemptible):
            continue
        why = HELD if pos == 0 else HELD_NORMAL
        for node in _held_by(s, cfg, entry):
            out.setdefault(node, why)
    return out


def _held_by(s: Session, cfg: ServiceConfig, entry: Entry) -> tuple[str, ...]:
    """``holds`` of ``entry``, kept for the transaction while WAITING_KEY is."""
    cache: dict[str, tuple[str, ...]] | None = s.info.get(HELD_KEY)
    if cache is not None and entry.id in cache:
        return cache[entry.id]
    held = holds(s, cfg, entry)
    if WAITING_KEY in s.info:
        s.info[HELD_KEY] = (cache or {}) | {entry.id: held}
    return held


def holds(s: Session, cfg: ServiceConfig, entry: Entry) -> tuple[str, ...]:
    """The nodes ``entry`` holds as the head of the queue (``scheduler.reserve``), in name
    order: among the nodes its cluster's placed members allow (a `ws cluster scale` grow),
    counting as free what workspaces already going away still hold."""
    rows = rows_of(s, entry)
    if not rows or addresses_short(s, rows) is not None:
        # Waiting for its network's addresses, not for a node: holding nodes would not
        # help it, and refused every newcomer there, on any network, naming the held
        # node rather than the full range.
        return ()
    pinned = pinned_out(s, rows, entry.affinity)
    nodes = [n for n in node_views(s) if n.name not in pinned]
    requests = [request_for(w) for w in rows]
    return scheduler.reserve(nodes, requests, cfg.scheduler, entry.affinity, leaving(s))


# What workspaces going away still hold on their nodes: being destroyed, or preempted
# (their claims are released once they are TERMINATED).
_LEAVING = Prepared(
    select(
        Workspace.node,
        func.sum(Workspace.claimed_cpus),
        func.sum(Workspace.claimed_memory_mib),
        func.sum(func.coalesce(Workspace.claimed_disk_mbps, 0)),
        func.sum(func.coalesce(Workspace.claimed_net_mbps, 0)),
    )
    .where(
        Workspace.node != "",
        Workspace.state != State.TERMINATED.value,
        or_(
            Workspace.desired_state == Desired.TERMINATED.value,
            and_(Workspace.preemptible.is_(True), Workspace.preempted_by != ""),
        ),
    )
    .group_by(Workspace.node)
)


def leaving(s: Session) -> dict[str, scheduler.Leaving]:
    """Per node: what its workspaces going away still hold (vCPUs, MiB, disk, net)."""
    return {
        node: (int(c or 0), int(m or 0), int(d or 0), int(n or 0))
        for node, c, m, d, n in _LEAVING.rows(flushed(s))
    }


def withheld(
    s: Session, rows: list[Workspace], affinity: scheduler.Affinity, held: Mapping[str, str]
) -> dict[str, str]:
    """The nodes ``rows`` may not use, each with why: ``held`` (those the queue's holders
    hold against them, ``head_holds``), and for new members of a placed cluster those its
    affinity rules out."""
    out = dict(held)
    out.update(pinned_out(s, rows, affinity))
    return out


def pinned_out(s: Session, rows: list[Workspace], affinity: scheduler.Affinity) -> dict[str, str]:
    """For new members of a cluster that already has placed ones (a `ws cluster scale`
    grow), the nodes they may not use, with why: with HARD affinity every node but the
    one the others are on, with HARD_ANTI the nodes one of the others is on. The
    scheduler sees only the group it places, so the members already placed are kept in
    by the nodes it may use."""
    cluster = rows[0].cluster if rows else ""
    if not cluster or affinity not in (scheduler.Affinity.HARD, scheduler.Affinity.HARD_ANTI):
        return {}
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
        return {}
    if affinity is scheduler.Affinity.HARD_ANTI:
        return dict.fromkeys(taken, "already hold a member of the group (hard anti-affinity)")
    return {
        n.name: "do not hold the group's other members (hard affinity)"
        for n in node_views(s)
        if n.name not in taken
    }


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

    Requests already waiting keep their turn: a newcomer may not use the nodes the
    oldest waiting request holds (``head_holds``; for a normal newcomer, the oldest
    waiting normal request: a preemptible one does not hold normal work back), so it
    cannot delay it.
    """
    preemptible = any(w.preemptible for w in rows)
    held = head_holds(s, env.cfg, exclude={w.id for w in rows}, preemptible=preemptible)
    out = withheld(s, rows, affinity, held)
    try:
        return place_rows(s, env.cfg, rows, affinity, out)
    except NoPlacement as exc:
        preempted = place_preempting(env, s, rows, affinity, out)  # ops/preempt.py
        if preempted is not None:
            return preempted
        why = exc.message
        never = never_placed(s, env.cfg, rows)
        if never is not None:
            # Asked to wait or not, the same words: a program that retries
            # RESOURCE_EXHAUSTED stops on them (docs/api.md).
            queued = "not queued: " if wait_s > 0 else ""
            raise ResourceExhausted(
                f"cannot place {label}: {why}; {queued}even on an empty, READY node of "
                f"the site, {never}, so waiting would not help"
            ) from exc
        if wait_s <= 0:
            raise ResourceExhausted(f"cannot place {label}: {why}") from exc
        deadline = env.clock() + wait_s
        for w in rows:
            set_waiting(w, why, deadline)
        forget_waiting(s)  # these wait now
        return []
