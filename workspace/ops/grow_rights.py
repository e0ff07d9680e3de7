"""Who grows a cluster, and whether they still may when the grow is made.

Two grows are made later than they were asked for: the autoscaler's, with the rights of
whoever turned it on (ops/autoscale.py), and a grow that waits for capacity
(``ws cluster scale --wait-for-capacity``, or the autoscaler's), placed by the queue
pass (ops/queue.py). Both keep who asked (``stored``: the user, their admin role,
their certificate's projects, serial and issue time) and check it again then
(``problem``): a certificate revoked since, or a user who may no longer act on the
cluster (its owner, a member of its project, an admin), or who no longer belongs to the
project its new members are charged to (``ws-admin project remove-user``), grows
nothing.

A create (a workspace's, or a cluster's) that waits for capacity keeps who asked for it
too (``workspaces.asked_by``) and is placed only while they still may make it
(``asker_problem``): not with a certificate revoked since, nor in a project they no
longer belong to.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from sqlalchemy.orm import Session

from workspace.identity import Identity, Kind
from workspace.ops.projects import scope
from workspace.store import Cluster


def stored(who: Identity) -> dict[str, Any]:
    """``who`` as kept with what it asked for (``actor`` reads it back)."""
    by: dict[str, Any] = {"user": who.name, "admin": who.admin, "projects": sorted(who.projects)}
    if who.serial:
        by["serial"] = format(who.serial, "x")
    if who.issued_at:
        by["issued_at"] = who.issued_at
    return by


def serial(by: Any) -> int:
    """The certificate serial ``stored`` kept (0: none, e.g. a service without TLS)."""
    try:
        return int(str(by.get("serial") or "0"), 16) if isinstance(by, dict) else 0
    except ValueError:
        return 0


def actor(by: Any) -> Identity | None:
    """The identity ``stored`` kept (None: nothing kept)."""
    if not isinstance(by, dict) or not by.get("user"):
        return None
    return Identity(
        Kind.USER,
        str(by["user"]),
        admin=bool(by.get("admin")),
        projects=tuple(str(p) for p in by.get("projects") or ()),
        serial=serial(by),
        issued_at=float(by.get("issued_at") or 0.0),
    )


def problem(s: Session, c: Cluster, by: Any, revoked: Set[int], role: str) -> str:
    """Why the user ``by`` names can no longer grow cluster ``c`` ("": they can, or
    nobody is named). ``role``: what they did, for the message ("who turned the
    autoscaler on")."""
    who = actor(by)
    if who is None:
        return ""
    named = f"{who.principal}, {role},"
    if who.serial and who.serial in revoked:
        return f"the certificate of {named} has been revoked (serial 0x{who.serial:x})"
    if who.admin:
        return ""
    mine = scope(s, who)
    if not mine.sees(c.owner, c.project):
        return f"{named} may no longer act on cluster {c.name}"
    if c.project and c.project not in mine.projects:
        return f"{named} is no longer a member of project {c.project}"
    return ""


def asker_problem(s: Session, project: str, by: Any, revoked: Set[int]) -> str:
    """Why the user ``by`` names may no longer have the create they asked for, waiting for
    capacity in ``project``, placed ("": they may, or nobody is named): their
    certificate revoked, or (not an admin) no longer a member of ``project``."""
    who = actor(by)
    if who is None:
        return ""
    named = f"{who.principal}, who asked for it,"
    if who.serial and who.serial in revoked:
        return f"the certificate of {named} has been revoked (serial 0x{who.serial:x})"
    if who.admin or not project:
        return ""
    if project not in scope(s, who).projects:
        return f"{named} is no longer a member of project {project}"
    return ""
