"""What several operations do to one workspace row: find it, terminate it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import callctx
from workspace.domain.events import Kind
from workspace.domain.states import Desired, NodeState, Op, State
from workspace.domain.tenancy import guess_refused
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from workspace.identity import Identity
from workspace.log import about
from workspace.ops import purge
from workspace.ops.projects import Scope, as_identity, scope
from workspace.ops.unit import Env
from workspace.store import Cluster, IpAllocation, Node, Workspace, journal
from workspace.store.mapping import set_reason

log = logging.getLogger("workspace.ops")

Owned = TypeVar("Owned", Workspace, Cluster)

# The operations that interrupt what runs in a workspace (or cluster): by a bare name
# they act only on the caller's own (``choose_owned``); a start, resume or lease
# extend, as a read, also on the one other user's of that name the caller may see. So
# do the other changes (``ws update``, ``ws cluster autoscale``, a shrinking scale, ``ws
# exec``, a console attach, ``ws image save``): each passes its verb as ``acting``.
DISRUPTIVE = frozenset({Op.STOP, Op.REBOOT, Op.PAUSE, Op.DESTROY})

# How much longer than ``limits.save_timeout_s`` a save waits for its node (ops/save.py).
SAVE_GRACE_S = 30.0


def resolve_owned(
    s: Session,
    model: type[Owned],
    who: Identity | str,
    ref: str,
    what: str,
    list_cmd: str,
    acting: str = "",
    owner_only: bool = False,
) -> Owned:
    """The ``model`` row named by id, by name or by OWNER/NAME that the caller may see
    (their own, their projects', any for an admin); by name, the caller's own before
    others', a live one before the newest terminated one. What the caller may not see is
    NOT_FOUND. ``acting``: the verb of an operation that changes the row (destroy, stop,
    ...): a bare name then names only the caller's own (``choose_owned``);
    ``owner_only``: only the owner and admins may do it (the caller checks)."""
    return choose_owned(
        s,
        who,
        ref,
        lambda: s.get(model, ref),
        lambda name: s.execute(
            select(model).where(model.name == name).order_by(model.created_at.desc())
        ).scalars(),
        what,
        list_cmd,
        acting,
        owner_only,
    )


class _Ownable(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> float: ...


R = TypeVar("R", bound=_Ownable)


def choose_owned(
    s: Session,
    who: Identity | str,
    ref: str,
    by_id: Callable[[], R | None],
    by_name: Callable[[str], Iterable[R]],
    what: str,
    list_cmd: str,
    acting: str = "",
    owner_only: bool = False,
) -> R:
    """``resolve_owned`` with the reads given: the row whose id is ``ref``
    (``by_id``), and the rows of a name, the newest first (``by_name``): ORM rows, or a
    view's columns (ops/queries.py).

    A bare name names someone else's row (a project colleague's; for an admin, anyone's)
    only when the caller has none of that name, and only to read it (show, events,
    watch). To act on it (``acting``: destroy, stop, ...) the caller gives its id or
    OWNER/NAME: ``ws destroy web1`` of a caller without a web1 destroyed a colleague's,
    which project members may do, but not by a guess (docs/design/cli.md).
    ``owner_only``: what only the owner and admins may do (update, exec): a user who is
    no admin is not told to give OWNER/NAME, which would not let them; the caller's
    check says who may (an admin, who may, is refused the guess as anyone)."""
    if not ref:
        raise InvalidArgument(f"give a {what} id or name")
    ident = as_identity(who)
    row = by_id()
    # The caller's own row, or any for an admin: seen whatever their projects (not read).
    if row is not None and (ident.admin or (ident.is_user and row.owner == ident.name)):
        return row
    # A project's rows are those made since it was (not its deleted namesake's).
    sc = scope(s, ident, made=True)
    if row is not None and sc.sees(row.owner, row.project, row.created_at):
        return row
    if "/" in ref:  # OWNER/NAME (a name has no '/'): that user's, if the caller sees it
        return _of_owner(s, ident, sc, ref, by_name, what, list_cmd)
    rows = [r for r in by_name(ref) if sc.sees(r.owner, r.project, r.created_at)]
    # The caller's own come first, even a terminated one: an admin's `ws destroy g1`
    # once destroyed the batch user's live g1 because the admin's own g1 was gone.
    own = [r for r in rows if r.owner == sc.name]
    pool = own or rows
    live = [r for r in pool if r.state != State.TERMINATED.value]
    if acting and not own and pool and (ident.admin or not owner_only):
        seen = [(r.owner, r.id, r.state) for r in (live or pool)[:5]]
        raise FailedPrecondition(guess_refused(what, ref, acting, seen))
    if not own and len({r.owner for r in live}) > 1:
        shown = ", ".join(f"{r.owner}'s {r.id}" for r in live[:5])
        raise FailedPrecondition(
            f"several users have a {what} named {ref!r} ({shown}); give its id"
        )
    if live or pool:
        return (live or pool)[0]
    # A workspace of the caller's deleted after terminated_retention says so.
    gone = purge.gone_note(s, ident, ref) if what == "workspace" else ""
    raise NotFound(f"no {what} {ref!r}{gone or f'; `{list_cmd}` shows yours'}")


def _of_owner(
    s: Session,
    ident: Identity,
    sc: Scope,
    ref: str,
    by_name: Callable[[str], Iterable[R]],
    what: str,
    list_cmd: str,
) -> R:
    """The row ``ref`` (OWNER/NAME) names: OWNER's of that name that the caller may see,
    a live one before the newest terminated one."""
    owner, _sep, name = ref.partition("/")
    if not owner or not name or "/" in name:
        raise InvalidArgument(
            f"{what} {ref!r}: give an id, a name, or OWNER/NAME (e.g. alice/web1)"
        )
    rows = [
        r for r in by_name(name) if r.owner == owner and sc.sees(r.owner, r.project, r.created_at)
    ]
    live = [r for r in rows if r.state != State.TERMINATED.value]
    if live or rows:
        return (live or rows)[0]
    gone = purge.gone_note(s, ident, name) if what == "workspace" and owner == sc.name else ""
    raise NotFound(
        f"no {what} {name!r} of {owner} that you may see{gone or f'; `{list_cmd}` shows them'}"
    )


def resolve_workspace(
    s: Session, who: Identity | str, ref: str, acting: str = "", owner_only: bool = False
) -> Workspace:
    return resolve_owned(s, Workspace, who, ref, "workspace", "ws list", acting, owner_only)


def named_for(ident: Identity, owner: str, name: str) -> str:
    """How ``ident`` names ``owner``'s workspace or cluster ``name`` in a hint (`ws stop
    NAME`, `ws cluster start NAME`, `ws lease extend NAME`): NAME if it is theirs, else
    OWNER/NAME: by a bare name a command finds the caller's own first, and one that
    changes something acts on no one else's (``choose_owned``). Events, site events and
    log lines name the owner apart and keep the bare name."""
    return name if ident.is_user and owner == ident.name else f"{owner}/{name}"


def check_owner(ident: Identity, owner: str, name: str, what: str) -> None:
    """Only its owner and admins may ``what`` workspace ``name`` (get into it, save it):
    project members who see it may not."""
    if not (ident.admin or (ident.is_user and owner == ident.name)):
        raise PermissionDenied(f"only {owner} (the owner) and admins may {what} workspace {name}")


def stopped(ws: Workspace) -> bool:
    """STOPPED and meant to stay so: its disks are still and its size may change."""
    return ws.state == State.STOPPED.value and ws.desired_state == Desired.STOPPED.value


# The reason of a workspace destroyed before it was ever placed (a create that waited).
CANCELLED = "destroyed while waiting for capacity"


def waiting(ws: Workspace) -> bool:
    """PENDING without a node: a create waiting for capacity (never placed)."""
    return not ws.node and ws.state == State.PENDING.value


def never_placed(ws: Workspace) -> bool:
    """No node ever held it and it no longer waits: a create that gave up waiting for
    capacity, or one refused while it waited (FAILED, ``node`` "")."""
    return not ws.node and ws.state not in (State.PENDING.value, State.TERMINATED.value)


def refuse_never_placed(ws: Workspace, op: Op) -> None:
    """FAILED_PRECONDITION for ``op`` (a destroy excepted) on a workspace ``never_placed``:
    no node would act on it, and a start left it STARTING (a stop STOPPING) for ever,
    nowhere, holding its project's quota."""
    if op is not Op.DESTROY and never_placed(ws):
        raise FailedPrecondition(
            f"cannot {op.value} workspace {ws.name}: it was never placed on a node "
            f"({ws.reason or ws.state}); destroy it, and create it again"
        )


def node_down(s: Session, name: str) -> bool:
    """No node ``name``, or it is DOWN: nothing there will act on the workspace."""
    node = s.get(Node, name) if name else None
    return node is None or NodeState(node.state) is NodeState.DOWN


def release(env: Env, s: Session, ws: Workspace, reason: str) -> None:
    """TERMINATED: addresses back to their pools, the node's claim released."""
    _free(s, ws)
    ws.state = State.TERMINATED.value
    ws.desired_state = Desired.TERMINATED.value
    set_reason(ws, reason)
    ws.updated_at = env.clock()
    log.info(
        "workspace %s (%s) terminated on node %s: %s",
        ws.id,
        ws.name,
        ws.node,
        reason,
        extra=about(ws.id, ws.node),
    )


def _free(s: Session, ws: Workspace) -> list[str]:
    """``ws``'s addresses (and their MACs) back to their pools, its node's claim released;
    returns the addresses."""
    ips: list[str] = []
    for alloc in _allocations(s, ws):
        ips.append(alloc.ip)
        s.delete(alloc)
    if ws.node:
        node = s.get(Node, ws.node)
        if node is not None:
            node.used_cpus = max(0, node.used_cpus - ws.claimed_cpus)
            node.used_memory_mib = max(0, node.used_memory_mib - ws.claimed_memory_mib)
            node.used_disk_mbps = max(0, (node.used_disk_mbps or 0) - (ws.claimed_disk_mbps or 0))
            node.used_net_mbps = max(0, (node.used_net_mbps or 0) - (ws.claimed_net_mbps or 0))
    ws.claimed_cpus = 0
    ws.claimed_memory_mib = 0
    ws.claimed_disk_mbps = 0
    ws.claimed_net_mbps = 0
    return ips


# -- destroyed while its node was not reachable ------------------------------------------------
#
# A workspace destroyed while its node is DOWN is TERMINATED at once (the destroy returns,
# the user's quota is free), but its VM may still run behind a partition: its addresses,
# their MACs and its node's claim stay *held* until the node's word says the VM is gone
# (a full report without it, or ABSENT), or an admin removes the node for good. Held: a
# TERMINATED row that still has claims or addresses (``release`` always frees both).

_HELD = "; held until node "


def _addresses(ips: list[str]) -> str:
    return ("address " if len(ips) == 1 else "addresses ") + ", ".join(ips)


def terminate_unconfirmed(env: Env, s: Session, ws: Workspace, reason: str) -> None:
    """TERMINATED while ``ws``'s node is not reachable: its addresses and its node's claim
    are held until the node confirms the VM is gone (``confirm_gone``) or is removed."""
    if not ws.node or s.get(Node, ws.node) is None:  # never placed, or no node left
        release(env, s, ws, reason)
        return
    ips = [a.ip for a in _allocations(s, ws)]
    ws.state = State.TERMINATED.value
    ws.desired_state = Desired.TERMINATED.value
    what = _addresses(ips) + " and its" if ips else "its"
    set_reason(ws, f"{reason}{_HELD}{ws.node} confirms the VM is gone: {what} capacity there")
    ws.updated_at = env.clock()
    log.warning(
        "workspace %s (%s) terminated while node %s was not reachable: %s held until it "
        "confirms the VM is gone",
        ws.id,
        ws.name,
        ws.node,
        _addresses(ips) if ips else "its capacity",
        extra=about(ws.id, ws.node),
    )


def _allocations(s: Session, ws: Workspace) -> list[IpAllocation]:
    """``ws``'s addresses, in the order they were given."""
    q = select(IpAllocation).where(IpAllocation.workspace_id == ws.id).order_by(IpAllocation.id)
    return list(s.execute(q).scalars())


def is_held(s: Session, ws: Workspace) -> bool:
    """Whether ``ws`` is TERMINATED and still holds addresses or a claim (``held_on``'s
    test, for one row already at hand)."""
    if ws.state != State.TERMINATED.value:
        return False
    return ws.claimed_cpus > 0 or ws.claimed_memory_mib > 0 or bool(_allocations(s, ws))


def held_on(s: Session, node_name: str) -> list[Workspace]:
    """The TERMINATED workspaces of ``node_name`` whose addresses or claim are still held."""
    has_address = select(IpAllocation.id).where(IpAllocation.workspace_id == Workspace.id).exists()
    return list(
        s.execute(
            select(Workspace)
            .where(
                Workspace.node == node_name,
                Workspace.state == State.TERMINATED.value,
                (Workspace.claimed_cpus > 0) | (Workspace.claimed_memory_mib > 0) | has_address,
            )
            .order_by(Workspace.id)
        ).scalars()
    )


def confirm_gone(env: Env, s: Session, ws: Workspace, why: str) -> None:
    """The node's word (``why``: what it said, or that it was removed): ``ws``'s VM is
    gone; what it held goes back to the pools, with a ``workspace.released`` event."""
    ips = _free(s, ws)
    base = ws.reason.partition(_HELD)[0]
    freed = _addresses(ips) + " and its capacity" if ips else "its capacity"
    set_reason(ws, f"{base}; {why}: {freed} released")
    ws.updated_at = env.clock()
    journal.add(
        s,
        journal.workspace_event(
            ws,
            callctx.current().who,
            Kind.WORKSPACE_RELEASED,
            env.clock(),
            subject=", ".join(ips),
            reason=why,
        ),
    )
    log.info(
        "workspace %s (%s): %s; %s released",
        ws.id,
        ws.name,
        why,
        freed,
        extra=about(ws.id, ws.node),
    )


def image_users(s: Session, image_name: str) -> list[Workspace]:
    """Live (not TERMINATED) workspaces made from image ``image_name``."""
    return list(
        s.execute(
            select(Workspace)
            .where(Workspace.image == image_name, Workspace.state != State.TERMINATED.value)
            .order_by(Workspace.created_at, Workspace.id)
        )
        .scalars()
        .all()
    )


def saving(env: Env, ws: Workspace) -> bool:
    """Whether a save of ``ws`` is under way (ops/save.py; a stale mark does not count)."""
    if not ws.saving_as:
        return False
    return ws.saving_since > saves_from(env)


def saves_from(env: Env) -> float:
    """A save mark set before this time has lapsed (its service died mid-save)."""
    return env.clock() - env.cfg.limits.save_timeout_s - SAVE_GRACE_S


def destroy_reason(env: Env, ws: Workspace, reason: str) -> str:
    """The reason of ``ws`` destroyed for ``reason``; while it is being saved, that its
    node keeps it until the save ends (ops/reports.py ``live_rows``) so that the save's
    image is made, as a lease's expiry waits for the save (ops/leases.py)."""
    if not saving(env, ws):
        return reason
    kept = f"destroyed once its save as image {ws.saving_as} ends"
    return f"{reason}; {kept}" if reason else kept


def refuse_while_saving(env: Env, ws: Workspace, what: str) -> None:
    """FAILED_PRECONDITION while ``ws`` is being saved: its disks must not change."""
    if saving(env, ws):
        raise FailedPrecondition(
            f"workspace {ws.name} is being saved as image {ws.saving_as}; "
            f"{what} it once the save has ended"
        )
