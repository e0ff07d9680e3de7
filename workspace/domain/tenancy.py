"""Projects: quotas, lease policy and membership, as the operations see them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from workspace.domain.netpolicy import Limits


class LeaseAction(enum.StrEnum):
    """What a workspace's lease expiry does (stored by name in projects.lease_action)."""

    STOP = "STOP"
    DESTROY = "DESTROY"


@dataclass(frozen=True)
class Quota:
    """Limits of a project (0 = no limit), or what it uses."""

    instances: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    image_bytes: int = 0

    def exceeded(self, used: Quota) -> list[str]:
        """The names of the limits ``used`` goes over (``instances``, ``vcpus``, ...)."""
        return [
            name
            for name in ("instances", "vcpus", "memory_mib", "disk_gib", "image_bytes")
            if 0 < getattr(self, name) < getattr(used, name)
        ]


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
