"""The capacity queue: place waiting requests when capacity appears, oldest first, with
backfill that cannot delay the head (ops/admission.py: later requests may not use the
nodes the head holds, recomputed at each pass; a preemptible head holds them only against
preemptible requests, and the first normal request blocked holds its own against normal
ones, as at admission); fail them at their deadline, or
as soon as no registered node could ever hold them (the nodes that could were removed).
One whose lease ended while it waited is left to the lease pass, which destroys it.
Members a cluster grow added are placed only while whoever asked for the grow may still
make it (ops/grow_rights.py); otherwise they are withdrawn, with a site event saying why.
A create (a lone workspace's or a cluster's) is placed only while whoever asked for it may
still make it: their certificate not revoked, still a member of its project (a removed
member keeps only their *live* workspaces there); otherwise it FAILS, with a site event
saying why. Under an ENFORCE trust policy, a waiting request is placed only while its
image is still trusted (a key revoked, expired or narrowed, a digest revoked, the mode
turned to ENFORCE while it waited): otherwise a create FAILS (a cluster's whole, one
member's image is enough) and a grow is withdrawn, with a ``workspace.refused`` event
(state ``trust``), rather than holding capacity for a boot the node would refuse."""

from __future__ import annotations

import json
import logging
from collections.abc import Set

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import callctx
from workspace.domain.events import Kind, Refusal, SiteEvent
from workspace.domain.model import QueueEntry
from workspace.domain.states import State
from workspace.log import about
from workspace.ops import grow_rights, placement, trust
from workspace.ops.admission import (
    HELD,
    HELD_NORMAL,
    Entry,
    entries,
    holders,
    holds,
    placed_reason,
    rows_of,
    withheld,
)
from workspace.ops.cluster_scale import withdraw
from workspace.ops.cluster_state import refresh
from workspace.ops.placement import NoPlacement, never_placed, place_rows
from workspace.ops.preempt import place_preempting
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store import Cluster, Workspace, journal
from workspace.store.mapping import set_reason, set_waiting

log = logging.getLogger("workspace.ops.queue")


def process(env: Env, revoked: Set[int] = frozenset(), shown: dict[str, str] | None = None) -> int:
    """One pass over the queue, oldest first; returns how many entries were placed.
    ``revoked``: the serials the site's CRL revokes now (a grow asked for with one of
    them is withdrawn). ``shown``: by workspace id, the reason the passes last sent the
    watchers of a request that still waits (its place in the queue and why it waits);
    a pass sends a waiting request's workspaces again only when that changed, so that a
    `ws create --wait` hears "2nd in the queue" become "1st" when it does (kept by
    the caller across passes; None: each pass sends every waiting one once)."""
    shown = {} if shown is None else shown
    with env.store.read() as s:
        waiting = entries(s)
    ahead = 0  # the entries before this one that still wait
    still: set[str] = set()
    # Once an entry is blocked: the nodes it holds against later ones, of every class
    # (the first blocked) and against normal ones (the first normal entry blocked).
    held_all: dict[str, str] | None = None
    held_normal: dict[str, str] | None = None
    trusted: set[str] = set()  # images the trust policy let launch, judged once a pass
    placed = 0
    for e in waiting:
        with write(env) as u:
            # The nodes as the scheduler sees them, read once per transaction (and not
            # at all while no node changed since the last read: store/orders_gen.py):
            # an entry's placement, its preemption and its never-fits check each read
            # every node otherwise, and a queue of 1,000 blocked requests read the
            # site's 1,000 nodes 3,000 times a pass, under the write lock.
            placement.keep_node_views(u.s)
            rows = rows_of(u.s, e)
            if not rows or any(w.state != State.PENDING.value or w.node for w in rows):
                continue
            if e.kind == "cluster":
                rows = _entitled(env, u, e, rows, revoked)
                if not rows:
                    continue
            now = env.clock()
            why = _asker_problem(u, rows, revoked)
            untrusted = "" if why or not env.check_trust else _untrusted(env, u, rows, trusted)
            if why:
                _refuse(env, u, e, rows, why, Refusal.RIGHTS)
            elif untrusted and e.kind == "cluster" and all(w.grown_by for w in rows):
                _withdraw_untrusted(env, u, e, rows, untrusted)
            elif untrusted:
                _refuse(env, u, e, rows, untrusted, Refusal.TRUST)
            elif e.deadline and now > e.deadline:
                _fail(rows, now)
                log.warning(
                    "%s %s (%s) gave up waiting for capacity", e.kind, e.id, e.name, extra=_ids(e)
                )
            elif any(0 < (w.lease_expires_at or 0) <= now for w in rows):
                # Its lease ended while it waited: the lease pass destroys it as one
                # that never ran; placed now, it would boot after its end.
                ahead += 1
                continue
            else:
                held = held_all if e.preemptible else held_normal
                out = withheld(u.s, rows, e.affinity, held or {})
                touched: list[str] | None
                try:
                    touched = place_rows(u.s, env.cfg, rows, e.affinity, out, now=now)
                except NoPlacement as exc:
                    touched = place_preempting(env, u.s, rows, e.affinity, out)
                    never = never_placed(u.s, env.cfg, rows) if touched is None else None
                    if touched is None and never is None:
                        for w in rows:
                            set_waiting(w, exc.message)
                        ahead += 1
                        if _show(u, rows, placed_reason(ahead, exc.message), shown):
                            refresh(env, u, u.changed_clusters())  # a cluster's says why too
                        still.update(w.id for w in rows)
                        if held_all is None:
                            held_all = dict.fromkeys(holds(u.s, env.cfg, e), HELD)
                            if not e.preemptible:
                                held_normal = dict(held_all)
                        elif held_normal is None and not e.preemptible:
                            held_normal = dict.fromkeys(holds(u.s, env.cfg, e), HELD_NORMAL)
                            held_all = held_normal | held_all
                        continue
                if touched is None:
                    why = f"no longer fits even on an empty node of the site: {never}"
                    _fail(rows, now, why)
                    log.warning("%s %s (%s) failed: %s", e.kind, e.id, e.name, why, extra=_ids(e))
                else:
                    placed += 1
                    u.nodes(*touched)
                    log.info(
                        "%s %s (%s) placed from the queue on %s",
                        e.kind,
                        e.id,
                        e.name,
                        sorted(set(touched)),
                        extra=_ids(e, *set(touched)),
                    )
            u.changed(*rows)
            refresh(env, u, u.changed_clusters())
    for gone in set(shown) - still:
        del shown[gone]
    return placed


def _show(u: UnitOfWork, rows: list[Workspace], reason: str, shown: dict[str, str]) -> bool:
    """Send the watchers of a request that still waits its ``reason`` (its place and why)
    if that is not what they were sent last; whether it was."""
    if all(shown.get(w.id) == reason for w in rows):
        return False
    for w in rows:
        shown[w.id] = u.reasons[w.id] = reason
    u.changed(*rows)
    return True


def _entitled(
    env: Env, u: UnitOfWork, e: Entry, rows: list[Workspace], revoked: Set[int]
) -> list[Workspace]:
    """The waiting members of cluster entry ``e`` that may still be placed: those a grow
    added for someone who may no longer make it (certificate revoked, no longer a member
    of the cluster's project, no longer able to act on it) are withdrawn
    (``cluster_scale.withdraw``), and a ``workspace.refused`` site event (state
    ``rights``) says why."""
    c = u.s.get(Cluster, e.id)
    if c is None or not any(w.grown_by for w in rows):
        return rows
    problems: dict[str, str] = {}  # by the asker as stored: one check each
    refused: dict[str, list[Workspace]] = {}
    kept: list[Workspace] = []
    for w in rows:
        key = json.dumps(w.grown_by or {}, sort_keys=True)
        if key not in problems:
            problems[key] = grow_rights.problem(
                u.s, c, w.grown_by, revoked, "who asked for the grow"
            )
        if problems[key]:
            refused.setdefault(problems[key], []).append(w)
        else:
            kept.append(w)
    for why, gone in refused.items():
        reason = (
            f"grow of cluster {c.name} waiting for capacity "
            f"({', '.join(w.name for w in gone)}) withdrawn: {why}"
        )
        withdraw(env, u, c, gone, reason)
        _refusal_event(env, u, reason, cluster=c.id, subject=gone[0].role)
        log.warning("%s", reason)
    return kept


def _asker_problem(u: UnitOfWork, rows: list[Workspace], revoked: Set[int]) -> str:
    """Why whoever asked for the create that made the waiting ``rows`` may no longer
    have it placed ("": they may; members a grow added are ``_entitled``'s)."""
    asked = next((w for w in rows if w.asked_by and not w.grown_by), None)
    if asked is None:
        return ""
    return grow_rights.asker_problem(u.s, asked.project, asked.asked_by, revoked)


def _untrusted(env: Env, u: UnitOfWork, rows: list[Workspace], trusted: set[str]) -> str:
    """Why the waiting ``rows`` may no longer be placed for their images under the trust
    policy now ("": they may; ``trust.placement_problem``): one member's image denied
    denies a cluster's create, all or nothing, as at create. ``trusted``: the images
    found allowed earlier in the pass (not judged again; those allowed now are added)."""
    for w in rows:
        if w.image in trusted:
            continue
        why = trust.placement_problem(env, u.s, w.image, w.id)
        if why:
            return why
        trusted.add(w.image)
    return ""


def _withdraw_untrusted(env: Env, u: UnitOfWork, e: Entry, rows: list[Workspace], why: str) -> None:
    """A cluster grow waiting for capacity whose image the trust policy now denies: its
    members are withdrawn (``cluster_scale.withdraw``), with a ``workspace.refused``
    site event (state ``trust``) saying why."""
    c = u.s.get(Cluster, e.id)
    if c is None:
        return
    reason = (
        f"grow of cluster {c.name} waiting for capacity "
        f"({', '.join(w.name for w in rows)}) withdrawn: {why}"
    )
    withdraw(env, u, c, rows, reason)
    _refusal_event(env, u, reason, cluster=c.id, subject=rows[0].role, state=Refusal.TRUST)
    log.warning("%s", reason)


def _refuse(
    env: Env, u: UnitOfWork, e: Entry, rows: list[Workspace], why: str, state: Refusal
) -> None:
    """The waiting create ``e`` FAILED, never placed, for ``why`` (its asker's rights,
    or its image no longer trusted), and a ``workspace.refused`` site event (``state``
    ``rights`` or ``trust``) saying so."""
    what = f"cluster {e.name}" if e.kind == "cluster" else f"workspace {e.name}"
    _fail(rows, env.clock(), f"not placed: {why}")
    one, reason = rows[0], f"create of {what} waiting for capacity failed: {why}"
    if e.kind == "cluster":
        _refusal_event(env, u, reason, cluster=e.id, subject=one.role, state=state)
    else:
        _refusal_event(
            env,
            u,
            reason,
            workspace_id=one.id,
            workspace_name=one.name,
            subject=one.image,
            state=state,
        )
    log.warning("create of %s (%s) waiting for capacity failed: %s", what, e.id, why, extra=_ids(e))


def _ids(e: Entry, *nodes: str) -> dict[str, str]:
    """``extra=`` of a line about entry ``e``: a lone workspace's id, and its node (JSON
    logs; a cluster's lines name it in their words)."""
    if e.kind != "workspace":
        return {}
    return about(e.id, nodes[0] if len(nodes) == 1 else "")


def _fail(rows: list[Workspace], now: float, reason: str = "") -> None:
    """The waiting ``rows`` FAILED: for ``reason``, else for their time being up."""
    for w in rows:
        w.state = State.FAILED.value
        set_reason(w, reason or f"no capacity in time: {w.wait_reason}")
        w.wait_deadline = 0.0
        w.updated_at = now


def list_queue(env: Env) -> list[QueueEntry]:
    out: list[QueueEntry] = []
    with env.store.read() as s:
        waiting = entries(s)
        holding = {e.id for e in holders(waiting)}
        found = _load(s, sorted(i for e in waiting for i in e.ids))
        for pos, e in enumerate(waiting, start=1):
            rows = rows_of(s, e, found)
            out.append(
                QueueEntry(
                    kind=e.kind,
                    id=e.id,
                    name=e.name,
                    owner=e.owner,
                    position=pos,
                    cpus=sum(w.cpus for w in rows),
                    memory_mib=sum(w.memory_mib for w in rows),
                    queued_at=e.queued_at,
                    deadline=e.deadline,
                    reason=rows[0].wait_reason if rows else "",
                    holds=holds(s, env.cfg, e) if e.id in holding else (),
                )
            )
    return out


# Ids bound per query (SQLite caps the number of bound parameters).
_CHUNK = 500


def _load(s: Session, ids: list[str]) -> dict[str, Workspace]:
    """The rows of ``ids`` by id: one query per 500, not one each."""
    rows: dict[str, Workspace] = {}
    for i in range(0, len(ids), _CHUNK):
        q = select(Workspace).where(Workspace.id.in_(ids[i : i + _CHUNK]))
        rows.update((w.id, w) for w in s.execute(q).scalars())
    return rows


def _refusal_event(
    env: Env,
    u: UnitOfWork,
    reason: str,
    subject: str,
    cluster: str = "",
    workspace_id: str = "",
    workspace_name: str = "",
    state: Refusal = Refusal.RIGHTS,
) -> None:
    """The ``workspace.refused`` site event of a waiting request not placed because its
    asker may no longer make it (state ``rights``), or its image is no longer trusted
    (``trust``)."""
    journal.add(
        u.s,
        SiteEvent(
            at=env.clock(),
            kind=Kind.WORKSPACE_REFUSED.value,
            who=callctx.current().who,
            state=state.value,
            reason=reason,
            subject=subject,
            cluster=cluster,
            workspace_id=workspace_id,
            workspace_name=workspace_name,
        ),
    )
