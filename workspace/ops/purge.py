"""TERMINATED workspaces and clusters deleted once ``terminated_retention`` has passed
since their last change (docs/design/store.md, "Terminated workspaces are deleted").

Without it the workspaces table only grew: every lookup by node, owner or project (a
node's orders, liveness, the lists, the quota check) read more dead rows each day. What
lives only with a workspace goes with it (its console log; it has no addresses left, or
it is not deleted); what outlives it stays: its usage intervals (bills are per
workspace), its site events (bounded by ``event_retention``), the trust audit.

Not deleted, whatever their age: a TERMINATED workspace whose addresses or claim are
still *held* (its node has not confirmed the VM is gone, ops/lifecycle.py ``held_on``),
one with a save mark, and a member of a cluster that is not TERMINATED (a live
cluster's state is computed from its members, the ended ones included). A TERMINATED
cluster goes with all its members, in one transaction, once each may go.

Each batch is its own short write transaction: the write lock is never held for more
than ``BATCH`` rows (or ``CLUSTERS`` clusters), and other writers run between them."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from workspace.config import parse_terminated_retention
from workspace.domain.states import ClusterState, State
from workspace.identity import Identity
from workspace.ops.unit import Env
from workspace.store import Cluster, ConsoleLog, IpAllocation, UsageInterval, Workspace, orders_gen

# Workspaces deleted per write transaction; clusters per write transaction.
BATCH = 200
CLUSTERS = 20


def _may_go(cut: float) -> ColumnElement[bool]:
    """A workspace TERMINATED before ``cut`` that holds nothing any more."""
    has_address = select(IpAllocation.id).where(IpAllocation.workspace_id == Workspace.id).exists()
    return and_(
        Workspace.state == State.TERMINATED.value,
        Workspace.updated_at < cut,
        Workspace.claimed_cpus == 0,
        Workspace.claimed_memory_mib == 0,
        Workspace.claimed_disk_mbps == 0,
        Workspace.claimed_net_mbps == 0,
        Workspace.saving_as == "",
        ~has_address,
    )


def purge(env: Env, acting: Callable[[], bool] = lambda: True) -> tuple[int, int]:
    """Delete what ``terminated_retention`` no longer keeps, batch by batch while
    ``acting()`` (the leader's); returns (workspaces, clusters) deleted."""
    seconds = parse_terminated_retention(env.cfg.terminated_retention)
    if not seconds:
        return 0, 0
    cut = env.clock() - seconds
    workspaces = clusters = 0
    while acting():
        found, n = _workspaces(env, cut)
        workspaces += n
        if found < BATCH:
            break
    while acting():
        found, members, n = _clusters(env, cut)
        workspaces += members
        clusters += n
        if found < CLUSTERS:
            break
    return workspaces, clusters


def _outside_live_cluster() -> ColumnElement[bool]:
    live_cluster = (
        select(Cluster.id)
        .where(Cluster.id == Workspace.cluster, Cluster.state != ClusterState.TERMINATED.value)
        .exists()
    )
    return or_(Workspace.cluster == "", ~live_cluster)


def _workspaces(env: Env, cut: float) -> tuple[int, int]:
    """One batch of workspaces outside any live cluster: (found, deleted). They are
    looked for outside the write lock (the search passes every row kept), and checked
    again under it by their ids."""
    with env.store.read() as s:
        found = list(
            s.execute(
                select(Workspace.id)
                .where(_may_go(cut), _outside_live_cluster())
                .order_by(Workspace.updated_at)
                .limit(BATCH)
            ).scalars()
        )
    if not found:
        return 0, 0
    with env.store.write() as s:
        rows = s.execute(
            select(Workspace.id, Workspace.node).where(
                Workspace.id.in_(found), _may_go(cut), _outside_live_cluster()
            )
        ).all()
        _delete(s, rows)
    return len(found), len(rows)


def _clusters(env: Env, cut: float) -> tuple[int, int, int]:
    """One batch of TERMINATED clusters whose members may all go: (found, members
    deleted, clusters deleted); looked for outside the write lock, checked under it."""
    staying = select(Workspace.id).where(Workspace.cluster == Cluster.id, ~_may_go(cut)).exists()
    may_go = and_(
        Cluster.state == ClusterState.TERMINATED.value, Cluster.updated_at < cut, ~staying
    )
    with env.store.read() as s:
        found = list(
            s.execute(
                select(Cluster.id).where(may_go).order_by(Cluster.updated_at).limit(CLUSTERS)
            ).scalars()
        )
    if not found:
        return 0, 0, 0
    with env.store.write() as s:
        ids = list(s.execute(select(Cluster.id).where(Cluster.id.in_(found), may_go)).scalars())
        if not ids:
            return len(found), 0, 0
        rows = s.execute(
            select(Workspace.id, Workspace.node).where(Workspace.cluster.in_(ids))
        ).all()
        _delete(s, rows)
        s.execute(delete(Cluster).where(Cluster.id.in_(ids)))
    return len(found), len(rows), len(ids)


def _delete(s: Session, rows: Sequence[tuple[str, str]]) -> None:
    if not rows:
        return
    ids = [r[0] for r in rows]
    s.execute(delete(ConsoleLog).where(ConsoleLog.workspace_id.in_(ids)))
    s.execute(delete(Workspace).where(Workspace.id.in_(ids)))
    # A Core delete is not seen by the ORM's bookkeeping (store/orders_gen.py).
    orders_gen.touch(s, *{r[1] for r in rows})


def gone_note(s: Session, who: Identity, ref: str) -> str:
    """Why a workspace ``ref`` (id or name) of ``who``'s is not found, when it was
    deleted after ``terminated_retention``: its usage outlives it. "" when there is no
    trace of one (or it was another user's: an admin sees every one)."""
    if not (who.admin or who.is_user):
        return ""
    q = select(func.max(UsageInterval.ended_at), func.min(UsageInterval.ended_at)).where(
        or_(UsageInterval.workspace_id == ref, UsageInterval.workspace_name == ref)
    )
    if not who.admin:
        q = q.where(UsageInterval.owner == who.name)
    last, first = s.execute(q).one()
    if not last or not first:  # none, or one still open (a live workspace)
        return ""
    ended = datetime.datetime.fromtimestamp(last, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f": it ended at {ended} and was deleted after the site's terminated_retention; "
        "`ws usage` still counts what it used"
    )
