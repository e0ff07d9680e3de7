"""`ws update`: the owner or an admin changes a live workspace's connectivity, allow
rules and limits (ops/netpolicy.py) and a stopped one's size (ops/resize.py), in one
transaction; the row changes and the node's generation is bumped (the agent receives
the new order and converges), and a ``workspace.updated`` site event says what changed.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from workspace import callctx
from workspace.domain.events import Kind
from workspace.domain.model import WorkspaceView
from workspace.domain.netpolicy import PolicyUpdate
from workspace.domain.states import Desired, State
from workspace.errors import FailedPrecondition, PermissionDenied
from workspace.identity import Identity
from workspace.log import about, named
from workspace.ops import netpolicy
from workspace.ops.lifecycle import named_for, resolve_workspace
from workspace.ops.projects import as_identity
from workspace.ops.resize import resize
from workspace.ops.unit import Env, write
from workspace.store import journal
from workspace.store.mapping import allow_rules, connectivity, limits, set_policy

log = logging.getLogger("workspace.ops.update")


def update(env: Env, who: Identity | str, upd: PolicyUpdate) -> WorkspaceView:
    """Change a live workspace's connectivity, allow rules and limits, and a stopped
    one's size (its owner or an admin). Every check runs before anything changes."""
    ident = as_identity(who)
    upd.limits.validate("update")
    with write(env) as u:
        # A change, not a read: by a bare name only the caller's own (an admin's `ws
        # update web1` changed the one user's web1 when the admin had none).
        ws = resolve_workspace(u.s, ident, upd.ref, acting="update", owner_only=True)
        if not (ident.admin or ws.owner == ident.name):
            raise PermissionDenied(
                f"only the owner of workspace {ws.name} ({ws.owner}) or an admin may update it"
            )
        if ws.state == State.TERMINATED.value or ws.desired_state == Desired.TERMINATED.value:
            raise FailedPrecondition(f"workspace {ws.name} is destroyed; nothing to update")
        old = (connectivity(ws), allow_rules(ws), limits(ws))
        lim = upd.limits.over(old[2])
        if upd.reset:
            defaults = netpolicy.project_limits(u.s, ws.project or "").over(
                env.cfg.defaults.limits()
            )
            lim = replace(lim, **{n: getattr(defaults, n) for n in upd.reset})
        new = (
            upd.connectivity or old[0],
            old[1] if upd.allow is None else tuple(sorted(set(upd.allow))),
            lim,
        )
        # The size first: its check sees the node as it is (ops/resize.py).
        shown = named_for(ident, ws.owner, ws.name)
        size = resize(u.s, env.cfg, ws, upd.cpus, upd.memory_mib, shown)
        what = netpolicy.changes(old, new)
        if what:
            netpolicy.check_bandwidth(u.s, ws, new[2])
            set_policy(ws, *new)
            if ws.node:
                netpolicy.reserve(u.s, ws)
        what = "; ".join(w for w in (size, what) if w)
        if what:
            ws.updated_at = env.clock()
            updated = journal.workspace_event(
                ws, callctx.current().who, Kind.WORKSPACE_UPDATED, env.clock(), reason=what
            )
            journal.add(u.s, updated)
            u.nodes(ws.node)
        u.changed(ws)
    if what:
        log.info(
            "workspace %s updated: %s",
            named(ws.id, ws.name, ws.node),
            what,
            extra=about(ws.id, ws.node),
        )
    return u.view(ws.id)
