"""Elastic clusters: one role of a cluster grown or shrunk to a count.

Grow: the new members (``<cluster>-<role>-<i>`` at the lowest free indices, alike the
role's) are made and admitted in one transaction, all or none — placed now, queued for
capacity, or refused whole (capacity, a project quota) with nothing changed. Shrink: the
members of highest index are destroyed first. Either way the stored spec count follows,
the cluster's state is recomputed, a ``cluster.scaled`` site event says who, what and
why, and the running members learn the new roster (ops/rosters.py). A scale to the
count the role has is a no-op that says so. docs/design/elastic-clusters.md.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from sqlalchemy.orm import Session

from workspace import callctx
from workspace.domain import seed
from workspace.domain.elastic import ScaleResult
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.leases import iso_time
from workspace.domain.model import ClusterView, CreateSpec, MemberSpec
from workspace.domain.netpolicy import Limits
from workspace.domain.states import ClusterState, Desired, State
from workspace.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    WorkspaceError,
)
from workspace.identity import Identity
from workspace.ops import grow_rights, keys, seeds
from workspace.ops.admission import admit
from workspace.ops.cluster_state import destroy_member, members_of, refresh, torn_down
from workspace.ops.clusters import MAX_MEMBERS, hint_name, resolve, view
from workspace.ops.create import check_networks, check_spec, check_wait, new_row
from workspace.ops.projects import (
    acting_scope,
    as_identity,
    check_workspace_quota,
    memberships,
)
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.scheduler import Affinity
from workspace.store import Cluster, Image, Workspace, journal
from workspace.store.mapping import member_specs, spec_column, workspace_views

log = logging.getLogger("workspace.ops.clusters")

_GONE = (ClusterState.TERMINATING.value, ClusterState.TERMINATED.value)


def live(rows: list[Workspace]) -> list[Workspace]:
    """Members not being destroyed."""
    return [
        w
        for w in rows
        if w.desired_state != Desired.TERMINATED.value and w.state != State.TERMINATED.value
    ]


def role_spec(c: Cluster, role: str) -> MemberSpec:
    specs = member_specs(c)
    for m in specs:
        if m.role == role:
            return m
    roles = ", ".join(m.role for m in specs) or "none"
    raise InvalidArgument(f"cluster {c.name} has no role {role!r} (its roles: {roles})")


def check_scalable(c: Cluster, named: str = "") -> None:
    """``named``: how the caller names ``c`` in a hint (``clusters.hint_name``; its name
    by default, as the owner and what the service stores name it)."""
    if c.state in _GONE:
        raise FailedPrecondition(f"cluster {c.name} is {c.state}: it cannot be scaled")
    if torn_down(c):
        raise FailedPrecondition(
            f"cluster {c.name} is FAILED and was torn down ({c.reason}): it cannot be "
            f"scaled; `ws cluster destroy {named or c.name}` removes it"
        )


def check_growable(c: Cluster, named: str = "") -> None:
    """New members boot and run: beside a cluster's stopped members they would leave it
    neither RUNNING nor STOPPED (STARTING for good). ``named``: as ``check_scalable``."""
    if c.state == ClusterState.PENDING.value:
        # Placed all or nothing: a new member placed at once (on the very nodes the
        # waiting ones hold) left the cluster partly running and no longer said it waits.
        raise FailedPrecondition(
            f"cannot grow cluster {c.name}: it is waiting for capacity (nothing placed "
            f"yet); grow it once it is placed, or destroy it and create it with the count"
        )
    if c.state in (ClusterState.STOPPED.value, ClusterState.STOPPING.value):
        raise FailedPrecondition(
            f"cannot grow cluster {c.name}: it is {c.state} (its new members would run "
            f"beside stopped ones); `ws cluster start {named or c.name}` first"
        )


def check_count(c: Cluster, role: str, count: int, others: int, named: str = "") -> None:
    if count < 0:
        raise InvalidArgument(
            f"cluster {c.name}, role {role}: count must be 0 or more, not {count}"
        )
    if others + count == 0:
        raise InvalidArgument(
            f"cluster {c.name}: scaling {role} to 0 would leave no member; "
            f"`ws cluster destroy {named or c.name}` removes the cluster"
        )
    if others + count > MAX_MEMBERS:
        raise InvalidArgument(
            f"cluster {c.name}: {others + count} members with {count} {role}; at most {MAX_MEMBERS}"
        )


def scale(
    env: Env,
    who: Identity | str,
    ref: str,
    role: str,
    count: int,
    wait_s: int = 0,
    why: str = "",
) -> tuple[ClusterView, ScaleResult]:
    """Scale role ``role`` of cluster ``ref`` to ``count`` members. ``why``: for the
    site event (the autoscaler's decision; "" = asked by the caller)."""
    check_wait(wait_s, env.cfg.limits)
    with write(env) as u:
        c = resolve(u.s, who, ref)
        if count < len(live([w for w in members_of(u.s, c.id) if w.role == role])):
            # A scale-down destroys members: by a bare name, as a destroy, only the
            # caller's own cluster (ops/lifecycle.py ``DISRUPTIVE``); a colleague's by
            # its id or OWNER/NAME. A grow or a read still finds a colleague's by name.
            c = resolve(u.s, who, ref, acting="scale down")
        named = hint_name(who, c)
        result = scale_in(env, u, c, role, count, wait_s, why, as_identity(who), named)
        shown = view(u.s, c)
    if result.added or result.removed:
        log.info("cluster %s (%s): %s", c.id, c.name, result.message)
    return shown, result


def scale_in(
    env: Env,
    u: UnitOfWork,
    c: Cluster,
    role: str,
    count: int,
    wait_s: int,
    why: str,
    actor: Identity | None = None,
    named: str = "",
) -> ScaleResult:
    """The scale in ``u``'s transaction (the autoscaler calls it too). ``actor``: who
    grows the cluster (the caller; for the autoscaler, whoever turned it on): new
    members may use an image it or the owner sees (projects.acting_scope). ``named``:
    how the caller names ``c`` in a hint (``check_scalable``); the autoscaler's
    refusals, stored on the cluster for whoever reads it, keep its name."""
    s = u.s
    check_scalable(c, named)
    spec = role_spec(c, role)
    members = members_of(s, c.id)
    mine = live([w for w in members if w.role == role])
    others = len(live([w for w in members if w.role != role]))
    check_count(c, role, count, others, named)
    previous = len(mine)
    asked = spec.count  # more than ``previous`` when members were destroyed on their own
    if count == previous and asked == count:
        return ScaleResult(
            previous,
            count,
            (),
            (),
            f"role {role} of cluster {c.name} already has {count} member(s): nothing to do",
        )
    added: list[Workspace] = []
    removed: list[Workspace] = []
    if count > previous:
        added = _grow(env, u, c, spec, members, mine, count - previous, wait_s, actor, named)
    elif count < previous:
        removed = _shrink(env, u, role, mine, previous, count)
    _set_count(c, role, count)
    # Every member's seed now carries the new roster: their bounds follow, and their
    # nodes' orders (and cached order-size bounds) are renewed.
    kept = live(members_of(s, c.id))
    seeds.set_cluster_bounds(s, c, kept)
    u.nodes(*(w.node for w in kept if w.node))
    refresh(env, u, {c.id})
    c.updated_at = env.clock()
    # Scaled to the members left after some were destroyed on their own: nothing to add
    # or remove, the role's count follows, and the cluster no longer says they left.
    before = previous if count != previous else asked
    arrow = f"{role} {before} → {count}"
    if added:
        message = f"cluster {c.name}: {arrow}: added {', '.join(w.name for w in added)}"
        if not any(w.node for w in added):
            message += " (waiting for capacity)"
    elif removed:
        message = f"cluster {c.name}: {arrow}: removing {', '.join(w.name for w in removed)}"
    else:
        message = (
            f"cluster {c.name}: {arrow}: keeps the {count} member(s) it has "
            "(the others were destroyed on their own)"
        )
    _scaled(
        env, s, c, role, before, count, f"{message}; {why or 'asked by ' + callctx.current().who}"
    )
    return ScaleResult(
        previous, count, tuple(w.name for w in added), tuple(w.name for w in removed), message
    )


def _set_count(c: Cluster, role: str, count: int) -> None:
    c.spec = spec_column(replace(m, count=count) if m.role == role else m for m in member_specs(c))


def free_indices(members: list[Workspace], role: str, n: int) -> list[int]:
    """The ``n`` lowest indices no member of ``role`` holds (one being destroyed still
    holds its name until it is gone)."""
    taken = {
        seed.member_index(w.name)
        for w in members
        if w.role == role and w.state != State.TERMINATED.value
    }
    out: list[int] = []
    i = 0
    while len(out) < n:
        if i not in taken:
            out.append(i)
        i += 1
    return out


def _grow(
    env: Env,
    u: UnitOfWork,
    c: Cluster,
    spec: MemberSpec,
    members: list[Workspace],
    mine: list[Workspace],
    n: int,
    wait_s: int,
    actor: Identity | None,
    named: str,
) -> list[Workspace]:
    s = u.s
    # New members are charged to the project, as a create in it would be, and a create
    # in it needs its member (projects.resolve_project): one an admin took out of it
    # (`ws-admin project remove-user`) grows nothing there.
    if (
        actor is not None
        and not actor.admin
        and c.project
        and c.project not in memberships(s, actor)
    ):
        raise PermissionDenied(
            f"cannot grow cluster {c.name}: {actor.principal} is not a member of "
            f"project {c.project}, which its new members would be charged to"
        )
    sc = acting_scope(s, c.owner, actor)
    template = workspace_views(s, [(mine or live(members) or members)[0]])[0] if members else None
    ended = template.lease_expires_at if template is not None else 0.0
    if template is not None and ended and ended <= env.clock():
        # A new member shares the members' lease: it would be born with an ended one
        # and run until the next lease pass, where a start is refused.
        raise FailedPrecondition(
            f"cannot scale cluster {c.name}: its lease ended at {iso_time(ended)}; "
            f"`ws lease extend {named or c.name} DURATION` first (every member's)"
        )
    check_growable(c, named)  # after the lease: once it is extended, `ws cluster start` is next
    rows: list[Workspace] = []
    for i in free_indices(members, spec.role, n):
        asked = CreateSpec(
            image=spec.image,
            name=f"{c.name}-{spec.role}-{i}",
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            networks=spec.networks,
            requirements=dict(spec.requirements),
            user_data=spec.user_data,
            extra_partitions=spec.extra_partitions,
            cluster=c.id,
            role=spec.role,
            connectivity=template.connectivity if template else None,
            allow=template.allow if template else (),
            limits=template.limits if template else Limits(),
            preemptible=bool(c.preemptible),
        )
        try:
            checked = check_spec(asked, env.cfg.limits)
            checked = replace(checked, networks=check_networks(s, checked.networks))
            image = s.get(Image, checked.image)
            if image is not None and not rows:
                seeds.check_user_data(env.cfg, image, checked.user_data)
            row = new_row(env, s, sc, checked, uuid.uuid4().hex, "", c.project)
            if actor is not None:  # placed later (queued), it is placed while they may
                row.grown_by = grow_rights.stored(actor)
            if template is not None and template.lease_expires_at:
                # The cluster ends when its members do: a new one shares their lease
                # (which was within the project's maximum when it was set, and so is
                # now), not a new default lease from now.
                row.lease_expires_at = template.lease_expires_at
            rows.append(row)
        except WorkspaceError as exc:
            raise type(exc)(
                f"cannot scale cluster {c.name}, role {spec.role}: {exc.message}"
            ) from exc
    if any(w.context == seeds.NOCLOUD for w in rows) and not c.key_private:
        c.key_private, c.key_public = keys.new_key_pair()
    s.flush()
    check_workspace_quota(
        s,
        c.project,
        f"cannot scale cluster {c.name} to {len(mine) + n} {spec.role}",
        bool(c.preemptible),
        [w.id for w in rows],
    )
    label = f"{n} new member(s) of cluster {c.name}"
    touched = admit(env, s, rows, Affinity[c.affinity], wait_s, label)
    u.changed(*rows)
    u.nodes(*touched)
    return rows


def _shrink(
    env: Env, u: UnitOfWork, role: str, mine: list[Workspace], previous: int, count: int
) -> list[Workspace]:
    doomed = sorted(mine, key=lambda w: seed.member_index(w.name), reverse=True)[: previous - count]
    for w in doomed:
        destroy_member(env, u.s, w, f"cluster scaled: {role} {previous} → {count}")
    u.changed(*doomed)
    u.nodes(*(w.node for w in doomed if w.node))
    return doomed


def withdraw(env: Env, u: UnitOfWork, c: Cluster, rows: list[Workspace], why: str) -> None:
    """Take back members of cluster ``c`` a grow added that still wait for capacity
    (``rows``), as the capacity queue does when whoever asked for the grow may no longer
    make it (ops/queue.py): they end at once (never placed), each role's count goes down
    by as many, the cluster's state follows, and a ``cluster.scaled`` site event says
    why."""
    s = u.s
    for role in sorted({w.role for w in rows}):
        gone = sorted((w for w in rows if w.role == role), key=lambda w: w.name)
        for w in gone:
            destroy_member(env, s, w, why)
        previous = role_spec(c, role).count
        count = max(0, previous - len(gone))
        _set_count(c, role, count)
        names = ", ".join(w.name for w in gone)
        _scaled(
            env,
            s,
            c,
            role,
            previous,
            count,
            f"cluster {c.name}: {role} {previous} → {count}: withdrew {names} "
            f"(waiting for capacity); {why}",
        )
    u.changed(*rows)
    kept = live(members_of(s, c.id))
    seeds.set_cluster_bounds(s, c, kept)
    u.nodes(*(w.node for w in kept if w.node))
    refresh(env, u, {c.id})
    c.updated_at = env.clock()


def _scaled(
    env: Env, s: Session, c: Cluster, role: str, previous: int, count: int, reason: str
) -> None:
    """The ``cluster.scaled`` site event of ``role`` going from ``previous`` to ``count``."""
    journal.add(
        s,
        SiteEvent(
            at=env.clock(),
            kind=Kind.CLUSTER_SCALED.value,
            who=callctx.current().who,
            cluster=c.id,
            subject=role,
            state=str(count),
            previous=str(previous),
            reason=reason,
        ),
    )
