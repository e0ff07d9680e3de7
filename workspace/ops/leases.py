"""Leases: a workspace's lifetime, from its project's policy (docs/design/usage.md).

A new workspace's lease is set at create (``lease_end``); its owner may extend it
(``extend``); the service's lease loop (``check``) warns before the end and, at the
end, stops or destroys the workspace through the same path as a user's request
(``operate.act``), so its node acts on it like on any other stop or destroy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.domain.events import Kind
from workspace.domain.leases import (
    EXPIRED,
    LeaseAction,
    extended_end,
    iso_time,
    new_lease_end,
)
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Desired, Op, State
from workspace.errors import FailedPrecondition
from workspace.identity import Identity
from workspace.log import about, named
from workspace.ops.lifecycle import resolve_workspace, saving
from workspace.ops.operate import act
from workspace.ops.unit import Env, write
from workspace.store import Project, Workspace, journal
from workspace.store.mapping import set_reason

log = logging.getLogger("workspace.ops.leases")

# The reason a workspace shows once warned (after the end: EXPIRED).
WARNING = "lease ends at "


@dataclass(frozen=True)
class Policy:
    """A project's lease settings (no project: no lease, expiry stops)."""

    default_s: int = 0
    max_s: int = 0
    action: LeaseAction = LeaseAction.STOP
    # When the action last became DESTROY (0: always so, as far as the store knows).
    destroy_since: float = 0.0

    def action_at(self, end: float) -> LeaseAction:
        """What the expiry of a lease that ends at ``end`` does: a lease that ended
        before the project's action became DESTROY ended under STOP, and its workspace,
        stopped then (or by its owner before), is not destroyed with its disks for an
        admin's later change (`ws-admin project set P --on-expiry destroy`)."""
        if self.action is LeaseAction.DESTROY and end <= self.destroy_since:
            return LeaseAction.STOP
        return self.action


def policy(s: Session, project: str) -> Policy:
    p = s.get(Project, project) if project else None
    if p is None:
        return Policy()
    action = LeaseAction.DESTROY if p.lease_action == "DESTROY" else LeaseAction.STOP
    return Policy(p.default_lease_s or 0, p.max_lease_s or 0, action, p.lease_destroy_since or 0.0)


def lease_end(s: Session, project: str, requested_s: int, now: float, site_max_s: int) -> float:
    """When a new workspace of ``project`` asking for ``requested_s`` (0 = the default)
    must end; 0 = never. InvalidArgument beyond the project's maximum, or the site's
    (``limits.max_lease_s``)."""
    pol = policy(s, project)
    return new_lease_end(requested_s, pol.default_s, pol.max_s, now, project, site_max_s)


def extend(env: Env, who: Identity | str, ref: str, add_s: int) -> WorkspaceView:
    """The owner's workspace's lease, ``add_s`` longer (never beyond the maximum from now)."""
    with write(env) as u:
        ws = resolve_workspace(u.s, who, ref)
        if ws.state == State.TERMINATED.value or ws.desired_state == Desired.TERMINATED.value:
            raise FailedPrecondition(f"workspace {ws.name} is destroyed; its lease is over")
        extend_row(env, u.s, ws, add_s, env.clock())
        u.changed(ws)
    log.info(
        "workspace %s: lease extended to %s",
        named(ws.id, ws.name, ws.node),
        iso_time(ws.lease_expires_at),
        extra=about(ws.id, ws.node),
    )
    return u.view(ws.id)


def extend_row(env: Env, s: Session, ws: Workspace, add_s: int, now: float) -> None:
    """Move live workspace ``ws``'s lease ``add_s`` later (``extended_end``: refused
    beyond its project's maximum, or the site's, from ``now``) and clear its warning;
    the caller names it changed."""
    ws.lease_expires_at = extended_end(
        ws.name,
        ws.lease_expires_at or 0.0,
        add_s,
        policy(s, ws.project).max_s,
        now,
        ws.project,
        env.cfg.limits.max_lease_s,
    )
    ws.lease_warned = False
    if ws.reason.startswith(WARNING):
        set_reason(ws, "")
    ws.updated_at = now


def refuse_save_after_end(env: Env, s: Session, ws: Workspace, named: str = "") -> None:
    """FAILED_PRECONDITION for a save of ``ws`` begun once its lease has ended in a
    project that destroys at expiry: the expiry waits for a save under way (``_expire``),
    so saves begun one after another kept the workspace past its lease without an
    extend. A save begun before the end still holds it until the save ends. ``named``:
    how the caller names ``ws`` in the hint (lifecycle ``named_for``; its name by default)."""
    end = ws.lease_expires_at or 0.0
    if not end or end > env.clock():
        return
    if action_of(s, ws) is LeaseAction.DESTROY:
        raise FailedPrecondition(
            f"cannot save workspace {ws.name}: its lease ended at {iso_time(end)} and "
            f"project {ws.project} destroys workspaces at expiry; "
            f"`ws lease extend {named or ws.name} DURATION` first"
        )


# -- the lease loop --------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """What one pass of the lease loop did (workspace ids)."""

    warned: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


def action_of(s: Session, ws: Workspace) -> LeaseAction:
    """What the expiry of ``ws``'s lease does (``Policy.action_at``)."""
    return policy(s, ws.project).action_at(ws.lease_expires_at or 0.0)


def _acts_on(ws: Workspace, action: LeaseAction) -> bool:
    """Whether expiry would do anything to ``ws``."""
    if ws.state == State.TERMINATED.value or ws.desired_state == Desired.TERMINATED.value:
        return False
    return action is LeaseAction.DESTROY or ws.desired_state != Desired.STOPPED.value


# Ids bound per query (SQLite caps the number of bound parameters).
_CHUNK = 500


def _leased(
    s: Session, before: float, unwarned: bool = False, ids: Sequence[str] | None = None
) -> list[Workspace]:
    """Live workspaces whose lease ends by ``before`` (only those not warned yet; only
    those of ``ids``, if given)."""
    q = select(Workspace).where(
        Workspace.lease_expires_at > 0,
        Workspace.lease_expires_at <= before,
        Workspace.state != State.TERMINATED.value,
        Workspace.desired_state != Desired.TERMINATED.value,
    )
    if unwarned:
        q = q.where(Workspace.lease_warned.is_(False))
    q = q.order_by(Workspace.lease_expires_at, Workspace.id)
    if ids is None:
        return list(s.execute(q).scalars())
    found: list[Workspace] = []
    for i in range(0, len(ids), _CHUNK):
        found += s.execute(q.where(Workspace.id.in_(ids[i : i + _CHUNK]))).scalars()
    return sorted(found, key=lambda w: (w.lease_expires_at, w.id))


def _to_warn(
    s: Session, now: float, before: float, ids: Sequence[str] | None = None
) -> list[Workspace]:
    """The live workspaces not warned yet whose lease ends after ``now`` and by
    ``before``, and whose expiry would act on them."""
    return [
        ws
        for ws in _leased(s, before, unwarned=True, ids=ids)
        if ws.lease_expires_at > now and _acts_on(ws, action_of(s, ws))
    ]


def check(env: Env) -> Round:
    """Warn the workspaces whose lease ends within ``lease_warning_s``; stop or destroy
    those whose lease has ended (each in its own transaction).

    The workspaces are found by reads outside the write lock (they read every live
    workspace: there is no index on the lease's end); the write lock is taken only for
    those to warn, read again by id, and for each expiry."""
    done = Round()
    now = env.clock()
    before = now + env.cfg.lease_warning_s
    with env.store.read() as s:
        warn = [ws.id for ws in _to_warn(s, now, before)]
    if warn:
        _warn(env, now, before, warn, done)
    with env.store.read() as s:  # a write only for those expiry acts on
        due = [ws.id for ws in _leased(s, now) if _acts_on(ws, action_of(s, ws))]
    for wid in due:
        if _expire(env, wid, now):
            done.expired.append(wid)
    return done


def _warn(env: Env, now: float, before: float, ids: list[str], done: Round) -> None:
    """Warn those of ``ids`` still to be warned (in one transaction)."""
    with write(env) as u:
        for ws in _to_warn(u.s, now, before, ids):
            end = ws.lease_expires_at
            ws.lease_warned = True
            if not ws.wait_reason:  # a queued workspace keeps saying why it waits
                set_reason(ws, WARNING + iso_time(end))
            u.changed(ws)
            done.warned.append(ws.id)
            log.info(
                "workspace %s: lease ends at %s",
                named(ws.id, ws.name, ws.node),
                iso_time(end),
                extra=about(ws.id, ws.node),
            )


def _expire(env: Env, wid: str, now: float) -> bool:
    """Stop or destroy one workspace whose lease has ended; False if there was nothing
    to do (or it cannot be done now, e.g. its node is lost: tried again next pass)."""
    with write(env) as u:
        ws = u.s.get(Workspace, wid)
        if ws is None or not ws.lease_expires_at or ws.lease_expires_at > now:
            return False
        action = action_of(u.s, ws)
        if not _acts_on(ws, action):
            return False
        # Never on a node (still waiting, or given up waiting): it never ran, and a
        # stop would leave it STOPPING nowhere (lifecycle.refuse_never_placed).
        unplaced = not ws.node
        op = Op.DESTROY if action is LeaseAction.DESTROY or unplaced else Op.STOP
        if op is Op.DESTROY and saving(env, ws):
            # Its owner saves what it holds as an image (a stopped workspace, so a STOP
            # has nothing to do): destroyed mid-copy, the save failed and the disks went
            # with it. It goes at the first pass after the save ends.
            log.info(
                "workspace %s: lease expired; destroyed once its save as %s ends",
                named(wid, ws.name, ws.node),
                ws.saving_as,
                extra=about(wid, ws.node),
            )
            return False
        try:
            if not act(env, u, ws, op, reason=EXPIRED + iso_time(ws.lease_expires_at)):
                return False  # already stopped or being destroyed
        except FailedPrecondition as exc:
            log.debug(
                "workspace %s: lease expired, but %s", wid, exc.message, extra=about(wid, ws.node)
            )
            return False
        why = EXPIRED + iso_time(ws.lease_expires_at)
        expired = journal.workspace_event(
            ws, "system", Kind.LEASE_EXPIRED, now, state=op.value, reason=why
        )
        journal.add(u.s, expired)
    log.warning(
        "workspace %s: lease expired at %s: %s",
        named(wid, ws.name, ws.node),
        iso_time(ws.lease_expires_at),
        op.value,
        extra=about(wid, ws.node),
    )
    return True
