"""Start, stop, reboot, pause, resume or destroy one workspace."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from workspace.domain.leases import iso_time
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Desired, Op, State, Transition, apply_op
from workspace.errors import FailedPrecondition
from workspace.identity import Identity
from workspace.log import about, named
from workspace.ops import preempt, trust
from workspace.ops.cluster_state import refresh
from workspace.ops.lifecycle import (
    CANCELLED,
    DISRUPTIVE,
    destroy_reason,
    named_for,
    node_down,
    refuse_never_placed,
    refuse_while_saving,
    resolve_workspace,
    terminate_unconfirmed,
    waiting,
)
from workspace.ops.projects import as_identity
from workspace.ops.unit import Env, UnitOfWork, write
from workspace.store import Image, Workspace
from workspace.store.mapping import set_reason, workspace_views

log = logging.getLogger("workspace.ops.operate")


def operate(
    env: Env, who: Identity | str, ref: str, op: Op, timeout_s: int = 0, force: bool = False
) -> WorkspaceView:
    """Apply ``op``: the desired state changes now; the node makes it real. An ``op``
    already asked for changes nothing and answers the workspace as it is."""
    with write(env) as u:
        ws = resolve_workspace(u.s, who, ref, acting=op.value if op in DISRUPTIVE else "")
        shown = named_for(as_identity(who), ws.owner, ws.name)  # in a hint
        if not act(env, u, ws, op, timeout_s, force, shown=shown):
            log.info(
                "workspace %s: %s asked again (nothing to change)",
                named(ws.id, ws.name, ws.node),
                op,
                extra=about(ws.id, ws.node),
            )
            return workspace_views(u.s, [ws])[0]
    log.info(
        "workspace %s: %s requested",
        named(ws.id, ws.name, ws.node),
        op.value,
        extra=about(ws.id, ws.node),
    )
    return u.view(ws.id)


def act(
    env: Env,
    u: UnitOfWork,
    ws: Workspace,
    op: Op,
    timeout_s: int = 0,
    force: bool = False,
    reason: str = "",
    shown: str = "",
) -> bool:
    """``op`` on a row already found (a user's request, or the service's own: lease
    expiry), inside ``u``; ``reason`` (if given) is what the workspace shows; ``shown``:
    how the caller names ``ws`` in a hint (its name by default). False: the op was
    already asked for, and nothing changed."""
    t = admissible(env, ws, op, shown)
    if t is None:  # already so: also a running workspace whose lease just ended
        return False
    if op is Op.START:
        check_trust(env, u.s, ws)
    apply(env, u, ws, op, t, timeout_s, force, reason)
    refresh(env, u, {ws.cluster})
    return True


def admissible(env: Env, ws: Workspace, op: Op, shown: str = "") -> Transition | None:
    """What ``op`` does to ``ws`` now; None when it was already asked for (nothing to
    change); FailedPrecondition saying why it is refused (the trust policy apart:
    ``check_trust``). ``shown``: what a lease's hint names, as the caller names it
    (lifecycle ``named_for``): the workspace, or the cluster whose op it is; ``ws``'s
    name by default. Every way of starting or stopping a workspace asks this, a
    cluster's too."""
    if waiting(ws) and op is not Op.DESTROY:
        raise FailedPrecondition(
            f"workspace {ws.name} is waiting for capacity; destroy it to cancel"
        )
    refuse_never_placed(ws, op)
    t = apply_op(op, State(ws.state), Desired(ws.desired_state), f"workspace {ws.name}")
    if t is None:
        return None
    if op is Op.START:
        refuse_while_saving(env, ws, "start")
    if op in (Op.START, Op.RESUME):
        check_lease(env, ws, op, shown)
    return t


def apply(
    env: Env,
    u: UnitOfWork,
    ws: Workspace,
    op: Op,
    t: Transition,
    timeout_s: int = 0,
    force: bool = False,
    reason: str = "",
) -> None:
    """Make ``t`` (from ``admissible``) so; the caller refreshes the cluster's state."""
    was_waiting = waiting(ws)
    ws.desired_state = t.desired.value
    ws.state = t.state.value
    ws.updated_at = env.clock()
    if op in (Op.START, Op.DESTROY):
        set_reason(ws, "")
    if reason:
        set_reason(ws, reason)
    if op is Op.STOP:
        ws.stop_timeout_s = timeout_s if timeout_s > 0 else env.cfg.default_stop_timeout_s
        ws.force_stop = force
    elif op is Op.DESTROY:
        ws.force_stop = force
    elif op is Op.REBOOT:
        ws.reboot_count += 1
    if op is Op.DESTROY and was_waiting:  # never placed: nothing to undo on a node
        terminate_unconfirmed(env, u.s, ws, reason or CANCELLED)
        preempt.terminated(u, ws)
    elif op is Op.DESTROY and node_down(u.s, ws.node):
        # No node at all: a create that failed before it was placed (no capacity in time).
        gone = "destroyed (its node was not reachable)" if ws.node else "destroyed"
        terminate_unconfirmed(env, u.s, ws, reason or gone)
        preempt.terminated(u, ws)
    elif op is Op.DESTROY:
        set_reason(ws, destroy_reason(env, ws, reason))  # kept while it is saved
    u.changed(ws)
    u.nodes(ws.node)


def check_lease(env: Env, ws: Workspace, op: Op, shown: str = "") -> None:
    """A workspace whose lease has ended does not run again until the lease is extended
    (of a member started with its cluster: the cluster's, every member's); ``shown``:
    what the hint extends, as the caller names it (``admissible``)."""
    end = ws.lease_expires_at or 0.0
    if end and end <= env.clock():
        raise FailedPrecondition(
            f"cannot {op.value} workspace {ws.name}: its lease ended at {iso_time(end)}; "
            f"`ws lease extend {shown or ws.name} DURATION` first"
        )


def check_trust(env: Env, s: Session, ws: Workspace) -> None:
    """Starting a stopped workspace boots its image again: the site's trust policy
    decides now, as at create (audited; PermissionDenied under enforce). The node checks
    again before it boots, but its refusal would leave the workspace FAILED, and a start
    let through would boot it unasked once the policy is relaxed."""
    img = s.get(Image, ws.image) if env.check_trust else None
    if img is not None:
        trust.check_launch(env, s, ws.owner, img, "start", workspace_id=ws.id)
