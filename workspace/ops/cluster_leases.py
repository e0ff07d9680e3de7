"""A cluster's lease: `ws lease extend CLUSTER DURATION` (docs/design/usage.md).

A cluster has no lease of its own: each member has one, set for all at create. An extend
of the cluster extends every live member's, as ``leases.extend`` extends one workspace's,
in one transaction: all of them or none (a member that cannot be extended that far
refuses the whole, naming it and the limit). Each member gets its ``lease.extended``
event, and the cluster one of its own.
"""

from __future__ import annotations

import logging

from workspace import callctx
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.leases import check_extension, iso_time
from workspace.domain.model import ClusterView
from workspace.errors import FailedPrecondition, InvalidArgument
from workspace.identity import Identity
from workspace.ops.cluster_scale import live
from workspace.ops.cluster_state import members_of
from workspace.ops.clusters import resolve, view
from workspace.ops.leases import extend_row
from workspace.ops.unit import Env, write
from workspace.store import journal

log = logging.getLogger("workspace.ops.cluster_leases")


def extend(env: Env, who: Identity | str, ref: str, add_s: int) -> ClusterView:
    """Cluster ``ref``'s live members' leases, each ``add_s`` longer (from its end, or
    from now once it has ended), or none of them."""
    with write(env) as u:
        c = resolve(u.s, who, ref)
        # The amount before the members, as for a workspace: 0 s or less was refused as
        # "no lease" (FAILED_PRECONDITION: read the cluster) when the cluster had none.
        check_extension(add_s)
        members = live(members_of(u.s, c.id))
        leased = [m for m in members if m.lease_expires_at]
        if not leased:
            what = "no lease" if members else "no live member"
            raise FailedPrecondition(
                f"cluster {c.name} has {what}; there is nothing to extend (a lease is given "
                "when a cluster is created: `ws cluster create --lease DURATION`, or its "
                "project's default lease)"
            )
        now = env.clock()
        for m in leased:
            try:
                extend_row(env, u.s, m, add_s, now)
            except (InvalidArgument, FailedPrecondition) as exc:
                raise type(exc)(
                    f"cannot extend the lease of cluster {c.name}, nor of any of its "
                    f"members: {exc.message}"
                ) from None
        u.changed(*leased)
        ends = sorted({m.lease_expires_at for m in leased})
        until = iso_time(ends[0]) + (f" to {iso_time(ends[-1])}" if len(ends) > 1 else "")
        journal.add(
            u.s,
            SiteEvent(
                at=now,
                kind=Kind.LEASE_EXTENDED.value,
                who=callctx.current().who,
                cluster=c.id,
                subject=c.name,
                reason=f"until {until} ({len(leased)} member(s))",
            ),
        )
        c.updated_at = now
        shown = view(u.s, c)
    log.info(
        "cluster %s (%s): lease of %d member(s) extended until %s",
        c.id,
        c.name,
        len(leased),
        until,
    )
    return shown
