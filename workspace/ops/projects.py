"""Tenancy: who sees what (owners, projects, admins), projects and their quotas.

A user sees their own objects and those of their projects (the projects named in their
certificate and the ``project_members`` rows); an admin sees everything. Quotas
(instances, vcpus, memory, disk, image bytes; 0 = no limit) are checked inside the
transaction that adds the rows, so a refused request leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    bindparam,
    delete,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from workspace.domain.events import Kind as EventKind
from workspace.domain.leases import duration_text, iso_time, site_maximum
from workspace.domain.netpolicy import Limits
from workspace.domain.states import Desired, State
from workspace.domain.tenancy import BACKFILL_OWNER, LeaseAction, ProjectSpec, ProjectUse, Quota
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from workspace.identity import NAME_RE, Identity, Kind
from workspace.ops import admin_events
from workspace.ops.unit import Env
from workspace.store import Backfill, Image, Project, ProjectDeletion, ProjectMember, Workspace
from workspace.store.mapping import bound_spec, flushed, limits_column
from workspace.store.prepared import Prepared

log = logging.getLogger("workspace.ops.projects")


def no_such_project(name: str) -> NotFound:
    """The error for an admin's command naming a project that does not exist."""
    return NotFound(f"project {name!r} does not exist; `ws-admin project list` shows them")


def admin_project(s: Session, name: str) -> Project:
    """The project an admin's command names: InvalidArgument for no name (it was NOT_FOUND,
    "project '' does not exist", as if one had been named), NotFound if none has it."""
    if not name:
        raise InvalidArgument("give a project name (`ws-admin project list` shows them)")
    p = s.get(Project, name)
    if p is None:
        raise no_such_project(name)
    return p


def unknown_project(name: str, who: Identity) -> NotFound:
    """The error for a request of ``who`` naming a project that does not exist: a user is
    shown their own projects, an admin every project."""
    if who.admin:
        return no_such_project(name)
    return NotFound(f"project {name!r} does not exist; `ws quota` shows yours")


GIB = 1024**3
# The quota names as `ws-admin project create --quota` spells them.
QUOTA_NAMES = {
    "instances": "instances",
    "vcpus": "vcpus",
    "memory_mib": "memory-mib",
    "disk_gib": "disk-gib",
    "image_bytes": "image-bytes",
    "preemptible_instances": "preemptible-instances",
    "preemptible_vcpus": "preemptible-vcpus",
    "preemptible_memory_mib": "preemptible-memory-mib",
    "preemptible_disk_gib": "preemptible-disk-gib",
}


def as_identity(who: Identity | str) -> Identity:
    """A caller given by name (plain methods, tests) is a user with no projects."""
    return who if isinstance(who, Identity) else Identity(Kind.USER, who)


# -- visibility ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What one caller may see: their objects, their projects' objects; admins all."""

    who: Identity
    projects: frozenset[str]
    # The caller acting in ``who``'s name (``acting_scope``): the images it sees may be
    # used too (image_refs.may_use); nothing else of it counts.
    acting: Scope | None = None
    # When each of ``projects`` that exists was made (``project_times``; None: not read,
    # every row of the name is theirs). A project deleted and made again under its name
    # is a new one: its members see the rows of the name made since (created_at,
    # started_at), not the old project's; of a project that no longer exists, none.
    made: tuple[tuple[str, float], ...] | None = None

    @property
    def name(self) -> str:
        return self.who.name

    def sees(self, owner: str, project: str, made_at: float | None = None) -> bool:
        return self.who.admin or self.lists(owner, project, made_at)

    def lists(self, owner: str, project: str, made_at: float | None = None) -> bool:
        """Whether a row of ``owner`` in ``project`` is among those ``clause`` lists (not
        all users): the caller's own, their projects' but not the site's backfill, which
        are the admins' alone, whatever their project. ``made_at``: when the row was
        made, to tell the project of its name then from the one now (``made``)."""
        if not self.who.is_user:
            return False
        if owner == self.who.name:
            return True
        if not project or project not in self.projects or owner == BACKFILL_OWNER:
            return False
        if made_at is None or self.made is None:
            return True
        since = dict(self.made).get(project)
        return since is not None and made_at >= since

    def clause(
        self, model: Any, all_users: bool = False, made: Any = None
    ) -> ColumnElement[bool] | None:
        """A WHERE clause for rows of ``model`` (owner, project) this caller lists; None:
        every row (an admin asking for all users). ``made``: the column of when a row was
        made (``model.created_at``), to leave out the rows of a project deleted since
        and of the old project of a name made again (``Scope.made``)."""
        if all_users:
            if not self.who.admin:
                raise PermissionDenied("only admins may list every user's objects")
            return None
        if not self.who.is_user:
            return false()
        mine = model.owner == self.who.name
        if not self.projects:
            return mine
        if made is None or self.made is None:
            of_projects = model.project.in_(sorted(self.projects))
        elif not self.made:
            return mine
        else:
            of_projects = or_(*(and_(model.project == p, made >= t) for p, t in self.made))
        return or_(mine, and_(of_projects, model.owner != BACKFILL_OWNER))

    def clauses(self, model: Any, all_users: bool, mine: bool) -> list[ColumnElement[bool]]:
        """The WHERE clauses of a list of ``model`` (``clause``, by ``created_at``);
        ``mine``: only the caller's own rows, not their projects' (ListWorkspaces.mine)."""
        where = self.clause(model, all_users, model.created_at)
        own = [model.owner == self.who.name] if mine else []
        return ([] if where is None else [where]) + own

    def owns(self, owner: str) -> bool:
        """Whether a row of ``owner`` is the caller's own: the rows ``mine`` keeps
        (``clauses`` says it in SQL; WatchWorkspaces.mine asks it of each change)."""
        return self.who.is_user and owner == self.who.name


# Every call asks it: built once (building a statement costs more than running it).
_MEMBER_OF = Prepared(select(ProjectMember.project).where(ProjectMember.user == bindparam("user")))


def memberships(s: Session, who: Identity) -> frozenset[str]:
    """The projects ``who`` belongs to: those of its certificate (but ``outdated`` ones)
    and its member rows."""
    if not who.is_user:
        return frozenset()
    rows = _MEMBER_OF.rows(flushed(s), {"user": who.name})
    carried = frozenset(who.projects) - outdated(s, who) if who.projects else frozenset()
    return carried | frozenset(r[0] for r in rows)


def outdated(s: Session, who: Identity) -> frozenset[str]:
    """The projects ``who``'s certificate names that were deleted after it was issued
    (``Identity.issued_at``): the project of such a name now, if any, was made again
    since and is not the one the certificate named, so the certificate makes its holder
    no member of it (a member row does: ``add_user``). Certificates carry whole seconds:
    one issued in the second of the deletion counts as issued after it."""
    if not who.projects:
        return frozenset()
    rows = _DELETED_SINCE.rows(flushed(s), {"after": who.issued_at + 1})
    return frozenset(r[0] for r in rows) & frozenset(who.projects)


# Every call of a certificate naming projects asks it (few projects are ever deleted).
_DELETED_SINCE = Prepared(
    select(ProjectDeletion.name).where(ProjectDeletion.deleted_at >= bindparam("after"))
)


def outdated_refusal(s: Session, who: Identity, project: str) -> PermissionDenied:
    """The refusal of ``who`` acting in ``project``, which their certificate names but
    which was deleted (and made again) since the certificate was issued."""
    deleted = s.scalar(
        select(func.max(ProjectDeletion.deleted_at)).where(ProjectDeletion.name == project)
    )
    when = f" at {iso_time(float(deleted))}" if deleted else ""
    return PermissionDenied(
        f"your certificate names project {project!r}, but it was issued before that project "
        f"was deleted{when}: the project {project!r} now is a new one. Get a new certificate "
        f"(an admin: ws-admin pki issue user {who.name} --project {project} ...) or ask an "
        f"admin to add you (ws-admin project add-user {project} {who.name})"
    )


def project_times(s: Session, names: Iterable[str]) -> tuple[tuple[str, float], ...]:
    """(name, created_at) of each of ``names`` that exists, by name (``Scope.made``)."""
    wanted = sorted(set(names))
    if not wanted:
        return ()
    q = select(Project.name, Project.created_at).where(Project.name.in_(wanted))
    return tuple(sorted((n, float(t or 0.0)) for n, t in s.execute(q)))


def deletion_times(s: Session, names: Iterable[str]) -> dict[str, list[float]]:
    """When each of ``names`` was deleted, every time (oldest first; a name never
    deleted is not in it): what began of a project before a deletion of its name was of
    the project deleted then (nothing of a project outlives it: ``delete_project``)."""
    wanted = sorted({n for n in names if n})
    out: dict[str, list[float]] = {}
    if wanted:
        q = (
            select(ProjectDeletion.name, ProjectDeletion.deleted_at)
            .where(ProjectDeletion.name.in_(wanted))
            .order_by(ProjectDeletion.deleted_at)
        )
        for name, at in s.execute(q):
            out.setdefault(name, []).append(float(at))
    return out


def scope(s: Session, who: Identity | str, *, made: bool = False) -> Scope:
    """``who``'s scope; ``made``: with when each of their projects was made (a read more),
    for the reads that reach rows a project deleted since left behind (terminated
    workspaces, usage intervals)."""
    ident = as_identity(who)
    mine = memberships(s, ident)
    return Scope(ident, mine, made=project_times(s, mine) if made else None)


class FollowedScope:
    """A caller's scope for a long stream (``ws watch``): read again whenever site events
    were written since it was read (a member added or removed is one), so a member an
    admin takes out of a project stops seeing its objects at the stream's next message,
    as every new call does. ``last`` is the scope as last read (no store read: for
    filters run by other threads). Read with when each project was made (``made``): a
    row of a project deleted since, and of the old project of a name made again, is
    not its members' (``Scope.lists`` with the row's ``made_at``)."""

    def __init__(self, env: Env, who: Identity) -> None:
        self.env = env
        self.who = who
        self._generation = env.notifier.site_event_generation()
        with env.store.read() as s:
            self.last = scope(s, who, made=True)

    def current(self) -> Scope:
        """The scope now: read again if site events were written since the last read."""
        generation = self.env.notifier.site_event_generation()  # before: nothing missed
        if generation != self._generation:
            with self.env.store.read() as s:
                self.last = scope(s, self.who, made=True)
            self._generation = generation
        return self.last


def acting_scope(s: Session, owner: str, actor: Identity | None) -> Scope:
    """The scope new members of ``owner``'s cluster are made in when ``actor`` grows it
    (the owner, a member of its project, an admin; the autoscaler for whoever turned it
    on; None: nobody known, the owner by name alone). Named for the owner, it may use an
    image the owner's name may (their own, their projects') or the actor may: an admin's
    cluster from another user's private image grows as it was made, and a user acting
    for an owner whose name gives no admin right gets none."""
    own = scope(s, owner)
    if actor is None or actor == own.who:
        return own
    return replace(own, acting=scope(s, actor))


def check_member(s: Session, who: Identity, asked: str, mine: frozenset[str]) -> None:
    """Nothing if ``who`` (of memberships ``mine``) may act in project ``asked``, which
    exists. NotFound if it does not exist, said only to whoever may know the name: an
    admin, a member, a holder of a certificate naming it (one no admin made yet has no
    quota, so nothing may be charged to it). To anyone else PermissionDenied whether it
    exists or not: the refusal tells no stranger which projects the site has."""
    if asked in mine or who.admin or (who.is_user and asked in who.projects):
        # The row is read once per transaction: the session holds it.
        if s.get(Project, asked) is None:
            raise unknown_project(asked, who)
        if asked in mine or who.admin:
            return
        raise outdated_refusal(s, who, asked)
    raise PermissionDenied(f"you are not a member of project {asked!r}")


def resolve_project(
    s: Session,
    who: Identity,
    asked: str,
    mine: frozenset[str] | None = None,
    *,
    require: bool = False,
) -> str:
    """The project a new object of ``who`` belongs to: the one asked for (which must be
    one of theirs), else their only project. A caller of several projects who names
    none is refused (INVALID_ARGUMENT naming them: nothing would count it). A caller of
    none gets "" (no project: no quota, no lease), unless ``require`` (the service's
    ``require_project``) and they are not an admin: FAILED_PRECONDITION then. ``mine``:
    ``who``'s memberships if already read in this transaction (``Scope.projects``)."""
    if mine is None:
        mine = memberships(s, who)
    if asked:
        check_member(s, who, asked, mine)
        return asked
    if not mine:
        # The certificate's only project was deleted since it was issued, and made again.
        for name in sorted(outdated(s, who)):
            if s.get(Project, name) is not None:
                raise outdated_refusal(s, who, name)
        if require and not who.admin:
            raise FailedPrecondition(
                "you belong to no project; ask an admin to add you: "
                f"ws-admin project add-user P {who.name}"
            )
        return ""
    if len(mine) > 1:
        raise InvalidArgument(
            f"you are a member of {', '.join(sorted(mine))}: say which with --project"
        )
    only = next(iter(mine))
    if s.get(Project, only) is None:
        raise NotFound(
            f"project {only!r}, named by your certificate, does not exist; an admin "
            f"makes it with `ws-admin project create {only}`"
        )
    return only


# -- quotas ----------------------------------------------------------------------------------


def limits_of(p: Project) -> Quota:
    return Quota(
        p.quota_instances,
        p.quota_vcpus,
        p.quota_memory_mib,
        p.quota_disk_gib,
        p.quota_image_bytes,
        p.quota_preemptible_instances or 0,
        p.quota_preemptible_vcpus or 0,
        p.quota_preemptible_memory_mib or 0,
        p.quota_preemptible_disk_gib or 0,
    )


def disk_bytes(w: Workspace) -> int:
    return sum(p.virtual_size_bytes or p.size_bytes for p in bound_spec(w).partitions)


def workspace_use(s: Session, project: str, leaving_out: Collection[str] = ()) -> Quota:
    """What the project's live workspaces (placed or waiting) hold, each class apart;
    image bytes not counted. ``leaving_out``: ids of workspaces not to count (those a
    refused request adds: what was in use before it)."""
    rows = s.execute(
        select(Workspace).where(
            Workspace.project == project, Workspace.state != State.TERMINATED.value
        )
    ).scalars()
    n = cpus = mem = disk = pn = pcpus = pmem = pdisk = 0
    for w in rows:
        if w.id in leaving_out:
            continue
        if w.preemptible:
            pn += 1
            pcpus += w.cpus
            pmem += w.memory_mib
            pdisk += disk_bytes(w)
            continue
        n += 1
        cpus += w.cpus
        mem += w.memory_mib
        disk += disk_bytes(w)
    return Quota(
        n,
        cpus,
        mem,
        math.ceil(disk / GIB),
        preemptible_instances=pn,
        preemptible_vcpus=pcpus,
        preemptible_memory_mib=pmem,
        preemptible_disk_gib=math.ceil(pdisk / GIB),
    )


def refuse_over(
    project: str,
    limits: Quota,
    before: Quota,
    used: Quota,
    label: str,
    only: Iterable[str] = (),
    going: int = 0,
    stopped: int = 0,
) -> None:
    """RESOURCE_EXHAUSTED naming the first quota ``used`` goes over (nothing if none),
    its limit, what was in use ``before`` the request and what the request asks more;
    ``only``: of these quotas alone (none given: all); ``going``: how many of the
    workspaces in use are being destroyed (they count until their node removed them);
    ``stopped``: how many are stopped (they count until they are destroyed)."""
    asked = set(only)
    over = [name for name in limits.exceeded(used) if not asked or name in asked]
    if over:
        name = over[0]
        unit = " bytes" if name == "image_bytes" else ""
        total, limit = getattr(used, name), getattr(limits, name)
        quota = f"the {QUOTA_NAMES[name]} quota of project {project}"
        had = getattr(before, name)
        in_use = f"{had}{unit} in use"
        if going:  # `ws destroy` returns before the node has removed them
            in_use += (
                f", {going} workspace(s) being destroyed among them (counted until their "
                "node has removed them: `ws destroy NAME --wait` waits for that)"
            )
        if total <= had:
            # An admin set it below what the project uses: a request that adds nothing
            # of it (a resize growing another figure) still does not grow the project.
            why = (
                f"{quota} is exceeded already ({in_use}, the limit is {limit}{unit}): "
                "nothing is added to the project until it is back under"
            )
        else:
            why = (
                f"{quota} would be exceeded ({in_use}, {total - had}{unit} more asked: "
                f"{total}{unit} in all, the limit is {limit}{unit})"
            )
        if stopped:  # `ws stop` frees no quota: the node keeps its memory and disks
            why += (
                f"; {stopped} stopped workspace(s) of the project count too: a stopped "
                "workspace keeps its share until it is destroyed (`ws destroy NAME`)"
            )
        raise ResourceExhausted(f"{label}: {why}; `ws quota` shows use and limits")


def check_workspace_quota(
    s: Session,
    project: str,
    label: str,
    preemptible: bool,
    adds: Collection[str] = (),
    *,
    before: Quota | None = None,
) -> None:
    """After the new rows (of the class ``preemptible`` says) were added (flushed):
    refuse if the project is over a quota of that class. The classes are checked apart:
    the other class over a quota an admin lowered does not refuse this one. The refusal
    says what was in use before: the use ``before`` it, else all but the workspaces of
    the ids ``adds`` (the new rows, or the one resized); and how many of the others are
    being destroyed or stopped, which count as well."""
    if not project:
        return
    p = s.get(Project, project)
    if p is None:
        return
    limits = limits_of(p)
    if limits.limits_workspaces():
        fields = PREEMPTIBLE_QUOTAS if preemptible else NORMAL_QUOTAS
        used = workspace_use(s, project)
        if not any(name in fields for name in limits.exceeded(used)):
            return
        if before is None:  # only on a refusal: a create pays no second read
            before = workspace_use(s, project, frozenset(adds))
        others = s.execute(
            select(Workspace.id, Workspace.desired_state).where(
                Workspace.project == project,
                Workspace.state != State.TERMINATED.value,
                Workspace.desired_state.in_((Desired.TERMINATED.value, Desired.STOPPED.value)),
                Workspace.preemptible.is_(preemptible),
            )
        ).all()
        new = frozenset(adds)
        counts = Counter(desired for wid, desired in others if wid not in new)
        going, stopped = counts[Desired.TERMINATED.value], counts[Desired.STOPPED.value]
        refuse_over(project, limits, before, used, label, fields, going, stopped)


# -- projects (admins) -----------------------------------------------------------------------


def _check_name(what: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} name {name!r} is not valid: 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def _spec(s: Session, p: Project) -> ProjectSpec:
    users = s.execute(
        select(ProjectMember.user)
        .where(ProjectMember.project == p.name)
        .order_by(ProjectMember.user)
    ).scalars()
    return ProjectSpec(
        p.name,
        limits_of(p),
        p.default_lease_s,
        p.max_lease_s,
        LeaseAction(p.lease_action),
        tuple(users),
        Limits.from_dict(p.default_limits or {}),
    )


def most_quota(field: str) -> int:
    """The largest ``field`` quota its column holds on both engines: a count of instances
    or vCPUs is an INTEGER column (32 bits on PostgreSQL), the others 64-bit ones."""
    column = Project.__table__.c[f"quota_{field}"]
    return 2**63 - 1 if isinstance(column.type, BigInteger) else 2**31 - 1


def _check_quota(q: Quota, fields: Iterable[str]) -> None:
    for field in fields:
        value = getattr(q, field)
        if value < 0:
            raise InvalidArgument(f"quota {QUOTA_NAMES[field]} must not be negative")
        if value > most_quota(field):
            # PostgreSQL refused it after the checks ("integer out of range"): an
            # internal error, where SQLite stored it.
            raise InvalidArgument(
                f"quota {QUOTA_NAMES[field]} {value} is too large: at most "
                f"{most_quota(field)} (0: no limit)"
            )


def _check_leases(env: Env, default_s: int, max_s: int) -> None:
    if default_s < 0 or max_s < 0:
        raise InvalidArgument("lease durations must not be negative")
    if max_s and default_s > max_s:
        raise InvalidArgument(
            f"the default lease of {duration_text(default_s)} is longer than the maximum "
            f"lease of {duration_text(max_s)}: lower the default or raise the maximum "
            "(--default-lease, --max-lease)"
        )
    site_max = env.cfg.limits.max_lease_s
    for what, value in (("default", default_s), ("maximum", max_s)):
        if value > site_max:
            raise InvalidArgument(
                f"the {what} lease of {duration_text(value)} is longer than "
                + site_maximum(site_max)
            )


def create_project(env: Env, spec: ProjectSpec) -> ProjectSpec:
    _check_name("project", spec.name)
    q = spec.quota
    _check_quota(q, vars(q))
    _check_leases(env, spec.default_lease_s, spec.max_lease_s)
    spec.default_limits.validate(f"project {spec.name}: default limits", "--default-")
    with env.store.write() as s:
        if s.get(Project, spec.name) is not None:
            raise AlreadyExists(f"project {spec.name!r} already exists")
        row = Project(
            name=spec.name,
            quota_instances=q.instances,
            quota_vcpus=q.vcpus,
            quota_memory_mib=q.memory_mib,
            quota_disk_gib=q.disk_gib,
            quota_image_bytes=q.image_bytes,
            quota_preemptible_instances=q.preemptible_instances,
            quota_preemptible_vcpus=q.preemptible_vcpus,
            quota_preemptible_memory_mib=q.preemptible_memory_mib,
            quota_preemptible_disk_gib=q.preemptible_disk_gib,
            default_lease_s=spec.default_lease_s,
            max_lease_s=spec.max_lease_s,
            lease_action=spec.on_expiry.value,
            default_limits=limits_column(spec.default_limits),
            created_at=env.clock(),
        )
        s.add(row)
        s.flush()
        shown = _spec(s, row)
        admin_events.record(
            env, s, EventKind.PROJECT_CREATED, spec.name, admin_events.about_project(shown)
        )
    log.info("project %s created (%s)", spec.name, q)
    return shown


def add_user(env: Env, project: str, user: str) -> ProjectSpec:
    _check_name("user", user)
    with env.store.write() as s:
        p = admin_project(s, project)
        if s.get(ProjectMember, (project, user)) is None:
            s.add(ProjectMember(project=project, user=user))
            s.flush()
            admin_events.record(env, s, EventKind.PROJECT_USER_ADDED, project, f"user {user}")
            log.info("user %s added to project %s", user, project)
        return _spec(s, p)


def remove_user(env: Env, project: str, user: str) -> ProjectSpec:
    """Take ``user`` out of ``project``'s recorded members (a certificate naming the
    project still makes its holder a member: revoke it for that)."""
    with env.store.write() as s:
        p = admin_project(s, project)
        row = s.get(ProjectMember, (project, user))
        if row is None:
            raise NotFound(f"user {user!r} is not a recorded member of project {project!r}")
        s.delete(row)
        s.flush()
        live = live_workspaces_of(s, project, user)
        stay = f"; {live} live workspace(s) of theirs stay in it" if live else ""
        admin_events.record(env, s, EventKind.PROJECT_USER_REMOVED, project, f"user {user}{stay}")
        log.info("user %s removed from project %s%s", user, project, stay)
        return _spec(s, p)


def live_workspaces_of(s: Session, project: str, owner: str) -> int:
    """How many workspaces of ``owner`` in ``project`` are not TERMINATED (they count
    against its quotas whoever its members are now)."""
    return int(
        s.scalar(
            select(func.count())
            .select_from(Workspace)
            .where(
                Workspace.project == project,
                Workspace.owner == owner,
                Workspace.state != State.TERMINATED.value,
            )
        )
        or 0
    )


def delete_project(env: Env, name: str) -> ProjectSpec:
    """Forget ``name`` and its recorded members, if nothing live belongs to it: no
    workspace but terminated ones, no image, no backfill entry (FAILED_PRECONDITION
    names what does, and how to end it). Terminated workspaces and usage intervals keep
    the name: past usage is still reported under it. Returns the project as it was."""
    with env.store.write() as s:
        p = admin_project(s, name)
        used = workspace_use(s, name)
        live = used.instances + used.preemptible_instances
        images = s.scalar(select(func.count()).select_from(Image).where(Image.project == name))
        backfill = s.scalars(select(Backfill.image).where(Backfill.project == name)).all()
        held = []
        if live:
            held.append(f"{live} workspace(s) not terminated (`ws list --all-users`; destroy them)")
        if images:
            held.append(f"{images} image(s) (`ws image list`; delete them)")
        if backfill:
            held.append(
                f"backfill of {', '.join(sorted(backfill))} (`ws-admin backfill clear IMAGE`)"
            )
        if held:
            raise FailedPrecondition(f"project {name!r} still has " + "; ".join(held))
        shown = _spec(s, p)
        s.execute(delete(ProjectMember).where(ProjectMember.project == name))
        # Certificates issued before now that name it make nobody a member of a
        # project made again under the name (``outdated``).
        s.add(ProjectDeletion(name=name, created_at=p.created_at or 0.0, deleted_at=env.clock()))
        s.delete(p)
        s.flush()
        members = ", ".join(shown.users) or "none"
        admin_events.record(
            env,
            s,
            EventKind.PROJECT_DELETED,
            name,
            f"{admin_events.about_project(shown)}; recorded members {members}",
        )
    log.info("project %s deleted (its %d recorded member(s) with it)", name, len(shown.users))
    return shown


# The quotas of each class, as set apart (``set_defaults``).
NORMAL_QUOTAS = ("instances", "vcpus", "memory_mib", "disk_gib", "image_bytes")
PREEMPTIBLE_QUOTAS = (
    "preemptible_instances",
    "preemptible_vcpus",
    "preemptible_memory_mib",
    "preemptible_disk_gib",
)


def set_defaults(
    env: Env,
    project: str,
    defaults: Limits | None,
    preemptible: Quota | None = None,
    *,
    quota: Quota | None = None,
    leases: tuple[int, int, LeaseAction] | None = None,
) -> ProjectSpec:
    """Change what is given of a project's settings (None: it stays): its default limits
    become ``defaults`` (each 0: the site's default), its preemptible quotas those of
    ``preemptible``, its normal quotas those of ``quota``, its lease policy ``leases``
    (default, maximum, action at expiry). A lower quota refuses new workspaces beyond
    it; those running stay."""
    if defaults is not None:
        defaults.validate(f"project {project}: default limits", "--default-")
    if preemptible is not None:
        _check_quota(preemptible, PREEMPTIBLE_QUOTAS)
    if quota is not None:
        _check_quota(quota, NORMAL_QUOTAS)
    if leases is not None:
        _check_leases(env, leases[0], leases[1])
    with env.store.write() as s:
        p = admin_project(s, project)
        before = _spec(s, p)
        if defaults is not None:
            p.default_limits = limits_column(defaults)
            log.info("project %s: default limits %s", project, limits_column(defaults) or "none")
        for given, fields in ((preemptible, PREEMPTIBLE_QUOTAS), (quota, NORMAL_QUOTAS)):
            if given is not None:
                for field in fields:
                    setattr(p, f"quota_{field}", getattr(given, field))
                log.info("project %s: quotas %s", project, limits_of(p))
        if leases is not None:
            p.default_lease_s, p.max_lease_s = leases[0], leases[1]
            if leases[2] is LeaseAction.DESTROY and p.lease_action != leases[2].value:
                p.lease_destroy_since = env.clock()  # leases ended before: under STOP
            p.lease_action = leases[2].value
            log.info("project %s: leases %s", project, leases)
        s.flush()
        after = _spec(s, p)
        changed = admin_events.project_changes(before, after)
        if changed:
            admin_events.record(env, s, EventKind.PROJECT_UPDATED, project, changed)
        return after


def list_projects(env: Env) -> list[ProjectSpec]:
    with env.store.read() as s:
        return [_spec(s, p) for p in s.execute(select(Project).order_by(Project.name)).scalars()]


def shown_projects(s: Session, who: Identity, project: str = "") -> list[str]:
    """The projects whose quotas ``who`` asks for: all of theirs (``project`` ""), or
    ``project`` if they are a member or an admin (NotFound / PermissionDenied if not)."""
    mine = memberships(s, who)
    if not project:
        return sorted(mine)
    check_member(s, who, project, mine)
    return [project]


def quotas(
    env: Env, who: Identity, image_bytes: Iterable[tuple[str, int]] = (), project: str = ""
) -> list[ProjectUse]:
    """The caller's projects (or only ``project``) with their limits and use, each class
    apart (``image_bytes``: (project, bytes) as the catalog counts them)."""
    images = dict(image_bytes)
    with env.store.read() as s:
        out = []
        for name in shown_projects(s, who, project):
            p = s.get(Project, name)
            if p is None:  # named by a certificate only: it takes no workspace
                continue
            limits = limits_of(p)
            use = workspace_use(s, name)
            used = replace(use, image_bytes=images.get(name, 0))
            out.append(
                ProjectUse(
                    name,
                    limits,
                    used,
                    p.default_lease_s or 0,
                    p.max_lease_s or 0,
                    LeaseAction(p.lease_action),
                )
            )
        return out
