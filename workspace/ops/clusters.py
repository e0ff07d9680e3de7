"""Virtual clusters: members placed all-or-nothing, managed and reported as one.

A cluster create checks its own arguments, then builds one ``CreateSpec`` per member
and runs the steps of a single create (ops/create.py) for each, in one transaction;
admission places all members or none.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from workspace.domain import elastic
from workspace.domain.model import ClusterRequest, ClusterView, CreateSpec
from workspace.domain.seed import member_index
from workspace.domain.states import ClusterState, Desired, Op, State, Transition, apply_op
from workspace.errors import AlreadyExists, FailedPrecondition, InvalidArgument, WorkspaceError
from workspace.identity import Identity
from workspace.ops import admission, grow_rights, keys, pages, seeds
from workspace.ops.admission import admit
from workspace.ops.cluster_state import (
    cluster_state,
    destroy_member,
    members_of,
    refresh,
    torn_down,
)
from workspace.ops.create import check_networks, check_not_id, check_spec, check_wait, new_row
from workspace.ops.image_refs import may_use
from workspace.ops.lifecycle import DISRUPTIVE, named_for, resolve_owned, waiting
from workspace.ops.operate import admissible, apply, check_trust
from workspace.ops.projects import (
    Scope,
    as_identity,
    check_workspace_quota,
    resolve_project,
    scope,
)
from workspace.ops.unit import Env, write
from workspace.store import Cluster, Image, Workspace
from workspace.store.mapping import (
    VIEW_COLUMNS,
    WAITING,
    ViewRow,
    cluster_view,
    flushed,
    member_specs,
    spec_column,
    view_row,
    view_rows,
    workspace_views,
)
from workspace.store.prepared import Prepared

log = logging.getLogger("workspace.ops.clusters")

CLUSTER_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
ROLE_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?")
MAX_MEMBERS = 1000


# A cluster's members as its view shows them (their view's columns, not ORM rows);
# ``view`` puts them in the roster's order.
_MEMBER_VIEWS = Prepared(
    select(*VIEW_COLUMNS)
    .where(Workspace.cluster == bindparam("cluster"))
    .order_by(Workspace.role, Workspace.name)
)


# Clusters whose members one query reads (SQLite caps the number of bound parameters).
_CHUNK = 500


def view(s: Session, c: Cluster) -> ClusterView:
    """The cluster as shown: its members (but those a scale removed, once they are gone,
    while the cluster lives) and its autoscaled roles."""
    return views(s, [c])[0]


def views(s: Session, shown: Sequence[Cluster]) -> list[ClusterView]:
    """``view`` of each of ``shown`` (a page of a list): their members read in one query
    and their NICs in one, not two queries per cluster."""
    if len(shown) == 1:
        rows = [view_row(r) for r in _MEMBER_VIEWS.rows(flushed(s), {"cluster": shown[0].id})]
    else:
        ids = [c.id for c in shown]
        rows = []
        for i in range(0, len(ids), _CHUNK):
            q = (
                select(*VIEW_COLUMNS)
                .where(Workspace.cluster.in_(ids[i : i + _CHUNK]))
                .order_by(Workspace.cluster, Workspace.role, Workspace.name)
            )
            rows += view_rows(s, q)
    by_cluster: dict[str, list[ViewRow]] = {c.id: [] for c in shown}
    for r in rows:
        by_cluster[r.cluster].append(r)
    kept = {c.id: _shown_members(c, by_cluster[c.id]) for c in shown}
    found = iter(workspace_views(s, [m for c in shown for m in kept[c.id]]))
    out = []
    for c in shown:
        members = [next(found) for _ in kept[c.id]]
        out.append(replace(cluster_view(c, members), autoscale=elastic.infos(c.autoscale)))
    return out


def _shown_members(c: Cluster, members: list[ViewRow]) -> list[ViewRow]:
    """Of ``c``'s members, those its view shows, in its roster's order."""
    if c.state != ClusterState.TERMINATED.value:
        shown = [m for m in members if m.state != State.TERMINATED.value]
        members = shown or members
    # As its roster lists them: the spec's roles in order, each by index (not by name,
    # which put worker-10 before worker-2).
    roles = {m.role: i for i, m in enumerate(member_specs(c))}
    members.sort(key=lambda m: (roles.get(m.role, len(roles)), m.role, member_index(m.name)))
    return members


def as_seen_by(view: ClusterView, who: Identity | str) -> ClusterView:
    """``view`` as ``who`` may see it: a role's user-data (which may carry tokens,
    passwords) only for the owner and admins, as a console (ops/consoles.py); a project
    member sees the rest of the spec."""
    ident = as_identity(who)
    if ident.admin or (ident.is_user and ident.name == view.owner):
        return view
    if not any(m.user_data for m in view.spec):
        return view
    return replace(view, spec=tuple(replace(m, user_data=b"") for m in view.spec))


def resolve(s: Session, who: Identity | str, ref: str, acting: str = "") -> Cluster:
    return resolve_owned(s, Cluster, who, ref, "cluster", "ws cluster list", acting)


def hint_name(who: Identity | str, c: Cluster) -> str:
    """How ``who`` names cluster ``c`` in a hint (`ws cluster destroy NAME`): its name if
    it is theirs, else OWNER/NAME (lifecycle ``named_for``, as for a workspace)."""
    return named_for(as_identity(who), c.owner, c.name)


def check_request(req: ClusterRequest) -> None:
    if not CLUSTER_NAME_RE.fullmatch(req.name):
        raise InvalidArgument(
            f"cluster name {req.name!r} is not valid: 1-40 lowercase letters, digits and '-'"
        )
    check_not_id("cluster", req.name)
    if not req.members:
        raise InvalidArgument(f"cluster {req.name}: no members")
    if req.wait_for_capacity_s < 0:
        raise InvalidArgument("wait_for_capacity_s must not be negative")
    roles: set[str] = set()
    total = 0
    for m in req.members:
        if not ROLE_RE.fullmatch(m.role):
            raise InvalidArgument(
                f"cluster {req.name}: role {m.role!r} is not valid: "
                "1-16 lowercase letters, digits and '-'"
            )
        if m.role in roles:
            raise InvalidArgument(f"cluster {req.name}: role {m.role!r} is given twice")
        roles.add(m.role)
        if m.count < 0:
            raise InvalidArgument(f"cluster {req.name}, member {m.role}: count must be >= 1")
        total += m.count or 1
    if total > MAX_MEMBERS:
        raise InvalidArgument(f"cluster {req.name}: {total} members; at most {MAX_MEMBERS}")
    req.limits.validate(f"cluster {req.name}")


def _member_rows(
    env: Env, s: Session, sc: Scope, cid: str, req: ClusterRequest, project: str
) -> list[Workspace]:
    rows: list[Workspace] = []
    for m in req.members:
        for i in range(m.count or 1):
            name = f"{req.name}-{m.role}-{i}"
            asked = CreateSpec(
                image=m.image,
                name=name,
                cpus=m.cpus,
                memory_mib=m.memory_mib,
                networks=m.networks,
                requirements=dict(m.requirements),
                user_data=m.user_data,
                extra_partitions=m.extra_partitions,
                cluster=cid,
                role=m.role,
                lease_s=req.lease_s,
                connectivity=req.connectivity,
                allow=req.allow,
                limits=req.limits,
                preemptible=req.preemptible,
            )
            try:
                spec = check_spec(asked, env.cfg.limits)
                spec = replace(spec, networks=check_networks(s, spec.networks))
                image = s.get(Image, spec.image)
                # Only of an image the caller may use: of another's private image the
                # refusal told that it exists and takes no user-data; new_row says it
                # is not found, as of one that does not exist.
                if image is not None and i == 0 and may_use(sc, image):
                    seeds.check_user_data(env.cfg, image, spec.user_data, member=True)
                rows.append(new_row(env, s, sc, spec, uuid.uuid4().hex, "", project))
            except WorkspaceError as exc:
                raise type(exc)(f"cluster {req.name}, member {m.role}: {exc.message}") from exc
    # One lease for the cluster: each row read the clock for its own (a second apart
    # under load), and a grow copies the first member's (ops/cluster_scale.py).
    for w in rows[1:]:
        w.lease_expires_at = rows[0].lease_expires_at
    return rows


def create(env: Env, who: Identity | str, req: ClusterRequest) -> ClusterView:
    """Create a cluster of the caller: all members placed, queued, or refused whole (also
    when they would take its project over a quota).

    The argument checks come after the request id is looked up, as a workspace's create
    does: a retried request gets what the first one got, also after a limit changed."""
    with write(env) as u:
        s = u.s
        sc = scope(s, who)
        owner = sc.name
        if req.request_id:
            prior = s.execute(
                select(Cluster).where(Cluster.owner == owner, Cluster.request_id == req.request_id)
            ).scalar_one_or_none()
            if prior is not None:
                if prior.request_hash != req.request_hash:
                    raise InvalidArgument(
                        f"request id {req.request_id!r} was already used "
                        "for a different request; use a new id"
                    )
                return view(s, prior)
        check_request(req)
        check_wait(req.wait_for_capacity_s, env.cfg.limits)
        clash = s.execute(
            select(Cluster.id).where(
                Cluster.owner == owner,
                Cluster.name == req.name,
                Cluster.state != ClusterState.TERMINATED.value,
            )
        ).first()
        if clash is not None:
            raise AlreadyExists(f"you already have a cluster named {req.name!r}")
        project = resolve_project(
            s, sc.who, req.project, sc.projects, require=env.cfg.require_project
        )
        cid = "c" + uuid.uuid4().hex[:11]
        now = env.clock()
        c = Cluster(
            id=cid,
            name=req.name,
            owner=owner,
            project=project,
            request_id=req.request_id or uuid.uuid4().hex,
            request_hash=req.request_hash,
            state=ClusterState.PENDING.value,
            reason="",
            affinity=req.affinity.name,
            on_failure=req.on_failure.value,
            spec=spec_column(req.members),
            preemptible=req.preemptible,
            autoscale={},
            wait_deadline=0.0,
            created_at=now,
            updated_at=now,
        )
        s.add(c)
        rows = _member_rows(env, s, sc, cid, req, project)
        if any(w.context == seeds.NOCLOUD for w in rows):
            c.key_private, c.key_public = keys.new_key_pair()
        seeds.set_cluster_bounds(s, c, rows)
        check_workspace_quota(
            s,
            project,
            f"cannot create cluster {req.name}",
            req.preemptible,
            [w.id for w in rows],
        )
        touched = admit(
            env,
            s,
            rows,
            req.affinity,
            req.wait_for_capacity_s,
            f"cluster {req.name}",
        )
        state, c.reason = cluster_state(rows, ClusterState(c.state))
        c.state = state.value
        if not touched:
            c.wait_deadline = rows[0].wait_deadline
            for w in rows:  # placed only while its asker may make it (ops/queue.py)
                w.asked_by = grow_rights.stored(sc.who)
        u.changed(*rows)
        u.nodes(*touched)
        shown = view(s, c)
    log.info(
        "cluster %s (%s): %d member(s) %s",
        cid,
        req.name,
        len(rows),
        f"placed on {sorted(set(touched))}" if touched else "waiting for capacity",
    )
    return shown


def get(env: Env, who: Identity | str, ref: str) -> ClusterView:
    """The cluster as shown; one waiting for capacity says its place in the queue, and so
    do its members that wait (a grow's too)."""
    with env.store.read() as s:
        c = resolve(s, who, ref)
        shown = view(s, c)
        shown = replace(shown, members=tuple(admission.positioned(s, shown.members)))
        if c.state == ClusterState.PENDING.value and shown.reason.startswith(WAITING):
            why = shown.reason.removeprefix(WAITING)
            shown = replace(shown, reason=admission.with_position(s, c.id, why))
        return shown


def list_clusters(
    env: Env, who: Identity | str, include_terminated: bool, all_users: bool = False
) -> list[ClusterView]:
    """The caller's clusters and their projects' (an admin's ``all_users``: everyone's)."""
    return list_page(env, who, include_terminated, all_users=all_users)[0]


def list_page(
    env: Env,
    who: Identity | str,
    include_terminated: bool,
    page_size: int = 0,
    page_token: str = "",
    all_users: bool = False,
    mine: bool = False,
) -> tuple[list[ClusterView], str]:
    """(one page of the caller's clusters and their projects', oldest first, the token
    of the next page or "" after the last; ``mine``: only the caller's own); page_size 0:
    all of them. Paged as ListWorkspaces is (ops/pages.py: a token of its own, after a
    creation time and id): a site's terminated clusters went into one message past the
    gRPC limit."""
    pages.check_size(page_size)
    with env.store.read() as s:
        q = select(Cluster).order_by(Cluster.created_at, Cluster.id)
        for where in scope(s, who, made=True).clauses(Cluster, all_users, mine):
            q = q.where(where)
        if not include_terminated:
            q = q.where(Cluster.state != ClusterState.TERMINATED.value)
        q = pages.by_creation(q, Cluster, "clusters", page_size, page_token)
        rows, token = pages.cut(list(s.execute(q).scalars()), "clusters", page_size)
        return views(s, rows), token


def check_not_waiting(c: Cluster, members: list[Workspace], op: Op = Op.STOP) -> None:
    """A stop of a cluster waiting for capacity (or with a grow waiting) is refused, as a
    waiting workspace's stop is: its waiting members, never placed, were made STOPPING
    with no node to stop them, left the queue and stayed so for good. A start of a
    cluster waiting for capacity is refused too, as a waiting workspace's start is (it
    was OK, changing nothing); a start of a running cluster with a grow waiting is a
    start asked again, and stays accepted."""
    queued = [m.name for m in members if waiting(m)]
    if not queued:
        return
    if len(queued) == len(members):
        raise FailedPrecondition(f"cluster {c.name} is waiting for capacity; destroy it to cancel")
    if op is not Op.STOP:
        return
    raise FailedPrecondition(
        f"cluster {c.name} has members waiting for capacity ({', '.join(queued)}): "
        f"`ws cluster scale` back cancels them; or stop it once they are placed"
    )


def operate(env: Env, who: Identity | str, ref: str, op: Op) -> ClusterView:
    """Start, stop or destroy every member. A start is all or nothing: one member that
    cannot start (its lease ended, being saved, PAUSED, LOST, never placed ...) refuses
    the whole, naming each such member and why, and nothing starts; a partial start left
    the cluster STARTING for good (and `ws cluster start --wait` waiting out its timeout),
    saying nothing of the members left STOPPED. A stop or a destroy acts on every member
    it can (one that cannot, LOST or never placed, keeps the cluster FAILED, saying so);
    it is refused when it can act on none."""
    with write(env) as u:
        s = u.s
        c = resolve(s, who, ref, acting=op.value if op in DISRUPTIVE else "")
        named = hint_name(who, c)  # in a hint: as the caller names it
        todo: list[tuple[Workspace, Transition]] = []
        refused: list[tuple[str, str]] = []  # (member, why)
        already = 0  # members the op was already asked for (nothing to change)
        members = members_of(s, c.id)
        if op is not Op.DESTROY:
            # Members destroyed by a scale or on their own have left the cluster (its
            # state leaves them out too): they are not its to start or stop, and would
            # refuse a start of a RUNNING cluster, or a stop of a STOPPED one, asked again.
            # None left (a torn-down cluster): each refuses, saying why.
            members = [m for m in members if m.desired_state != Desired.TERMINATED.value] or (
                members
            )
        if op in (Op.STOP, Op.START):
            check_not_waiting(c, members, op)
            if torn_down(c):
                raise FailedPrecondition(
                    f"cannot {op.value} cluster {c.name}: it is FAILED and was torn down "
                    f"({c.reason}); `ws cluster destroy {named}` removes it"
                )
        for m in members:
            if op is Op.START and waiting(m):  # a grow waiting: a start asked again
                already += 1
                continue
            try:
                if op is Op.DESTROY:
                    t = apply_op(op, State(m.state), Desired(m.desired_state), m.name)
                else:  # as `ws start` / `ws stop` of the member would
                    t = admissible(env, m, op, named)
            except FailedPrecondition as exc:
                refused.append((m.name, exc.message))
                continue
            if t is None:
                already += 1
            else:
                todo.append((m, t))
        if refused and (op is Op.START or not todo):
            raise FailedPrecondition(_refusal(c.name, op, refused))
        if not todo and not already:
            raise FailedPrecondition(
                f"cannot {op.value} cluster {c.name}: it has no member to act on"
            )
        if op is Op.START:
            for m, _ in todo:
                check_trust(env, s, m)  # one member refused: the whole start is
        for m, t in todo:
            if op is Op.DESTROY:
                destroy_member(env, s, m, "")
                u.changed(m)
                u.nodes(m.node)
            else:
                apply(env, u, m, op, t)
        if todo and op is Op.START and c.state == ClusterState.FAILED.value:
            c.state = ClusterState.STARTING.value
        if op is Op.DESTROY and torn_down(c):
            c.state = ClusterState.TERMINATING.value  # its members follow: TERMINATED
        refresh(env, u, {c.id})
        shown = view(s, c)
    log.info("cluster %s (%s): %s requested for %d member(s)", c.id, c.name, op.value, len(todo))
    return shown


# Members named in one line of a refusal; the rest are counted.
_NAMED = 8


def _refusal(cluster: str, op: Op, refused: Sequence[tuple[str, str]]) -> str:
    """Why ``op`` of ``cluster`` was refused: each member's reason, those refused alike
    in one line (16 workers whose lease ended: one line naming them, not 16)."""
    alike: dict[str, list[str]] = {}
    for name, why in refused:
        alike.setdefault(why.replace(name, "\0"), []).append(name)
    lines = []
    for why, names in alike.items():
        names.sort(key=lambda n: (n.rsplit("-", 1)[0], member_index(n)))
        shown = ", ".join(names[:_NAMED])
        if len(names) > _NAMED:
            shown += f" and {len(names) - _NAMED} more"
        if len(names) > 1:
            why = why.replace("workspace \0", "workspaces \0")
        lines.append(why.replace("\0", shown))
    none = "; nothing was started" if op is Op.START else ""
    return f"cannot {op.value} cluster {cluster}{none}: {'; '.join(lines)}"
