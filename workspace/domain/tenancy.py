"""Projects: quotas, lease policy and membership, as the operations see them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from workspace.domain.netpolicy import Limits

# The site principal that owns backfill workspaces (docs/design/backfill.md): not a name
# a user certificate can carry (identity.NAME_RE has no ':'); only admins see its objects.
BACKFILL_OWNER = "site:backfill"


class LeaseAction(enum.StrEnum):
    """What a workspace's lease expiry does (stored by name in projects.lease_action)."""

    STOP = "STOP"
    DESTROY = "DESTROY"


# Every quota, in the order they are checked and shown.
QUOTA_FIELDS = (
    "instances",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "image_bytes",
    "preemptible_instances",
    "preemptible_vcpus",
    "preemptible_memory_mib",
    "preemptible_disk_gib",
)


@dataclass(frozen=True)
class Quota:
    """Limits of a project (0 = no limit), or what it uses.

    The preemptible class is counted apart: its workspaces count against the
    ``preemptible_*`` figures only (their disks against ``preemptible_disk_gib``), normal
    ones against instances, vcpus, memory_mib and disk_gib only.
    """

    instances: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    image_bytes: int = 0
    preemptible_instances: int = 0
    preemptible_vcpus: int = 0
    preemptible_memory_mib: int = 0
    preemptible_disk_gib: int = 0

    def exceeded(self, used: Quota) -> list[str]:
        """The names of the limits ``used`` goes over (``instances``, ``vcpus``, ...)."""
        return [name for name in QUOTA_FIELDS if 0 < getattr(self, name) < getattr(used, name)]

    def limits_workspaces(self) -> bool:
        """Whether any limit applies to workspaces (all but image_bytes)."""
        return any(getattr(self, n) for n in QUOTA_FIELDS if n != "image_bytes")


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    quota: Quota = Quota()
    default_lease_s: int = 0
    max_lease_s: int = 0
    on_expiry: LeaseAction = LeaseAction.STOP
    users: tuple[str, ...] = ()  # members recorded by the service (output only)
    # Limits of its new workspaces that ask for none (0: the site's default).
    default_limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class ProjectUse:
    """One project of the caller: its limits and what it uses now."""

    project: str
    limits: Quota
    used: Quota
    # Its lease policy (seconds; 0 = none), as ProjectSpec has it: a member sees it too.
    default_lease_s: int = 0
    max_lease_s: int = 0
    on_expiry: LeaseAction = LeaseAction.STOP


def guess_refused(what: str, ref: str, acting: str, candidates: list[tuple[str, str, str]]) -> str:
    """Why bare name ``ref``, of no ``what`` of the caller's, does not name another
    user's for ``acting`` (a command that is no read: docs/design/cli.md "Naming a
    workspace or cluster"); ``candidates``: each (owner, id, state) of that name."""
    shown = ", ".join(f"{owner}/{ref} (id {id_}, {state})" for owner, id_, state in candidates)
    return (
        f"you have no {what} named {ref!r}; not guessing someone else's to {acting}: "
        f"give its id or OWNER/NAME ({shown})"
    )
