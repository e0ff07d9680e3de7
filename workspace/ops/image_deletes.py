"""Why an image cannot be deleted (ops/images.py ``delete_image``): the live workspaces
that use it and the clusters that grow from it, named as far as the caller may see them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.domain.states import ClusterState
from workspace.ops.projects import Scope
from workspace.store import Cluster, Workspace
from workspace.store.mapping import member_specs


def grown_from(s: Session, name: str) -> list[tuple[Cluster, str]]:
    """The (cluster, role) pairs of the clusters not destroyed whose role is of image
    ``name``: a role scaled to no member has no live workspace of it, and grows from it
    again (`ws cluster scale`, its autoscaler)."""
    live = select(Cluster).where(Cluster.state != ClusterState.TERMINATED.value)
    return [
        (c, m.role)
        for c in s.execute(live.order_by(Cluster.created_at, Cluster.id)).scalars()
        for m in member_specs(c)
        if m.image == name
    ]


def grows_message(name: str, grows: list[tuple[Cluster, str]], sc: Scope) -> str:
    """Why image ``name`` cannot be deleted: the cluster roles that grow from it, named
    as far as the caller (``sc``) may see them."""
    named = [
        f"role {role} of cluster {c.owner}/{c.name} ({c.id})"
        if sc.sees(c.owner, c.project or "")
        else "a role of another user's cluster"
        for c, role in grows
    ]
    return (
        f"image {name} is the image of {', '.join(dict.fromkeys(named))}: no member of it "
        "is live now, but the cluster grows from it again (`ws cluster scale`, its "
        "autoscaler), from a deleted image or from another pushed under its name; "
        "destroy the cluster first"
    )


def in_use_message(name: str, users: list[Workspace], sc: Scope) -> str:
    """Why image ``name`` cannot be deleted: its live ``users``, named as far as the
    caller (``sc``) may see them; the others only counted."""
    seen = [w for w in users if sc.sees(w.owner, w.project or "")]
    named = [f"{w.owner}/{w.name} ({w.id})" for w in seen[:10]]
    if len(seen) > 10:
        named.append(f"{len(seen) - 10} more")
    hidden = len(users) - len(seen)
    if hidden:
        named.append(
            "1 other user's workspace" if hidden == 1 else f"{hidden} other users' workspaces"
        )
    listed = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
    theirs = " (theirs by their owners or an admin)" if hidden else ""
    return (
        f"image {name} is in use by {len(users)} live workspace(s): {listed}; "
        f"destroy them first{theirs}"
    )
