"""Lease rules as pure functions (docs/design/usage.md): how long a new workspace may
live, how far a lease may be extended, and how a lease's end reads."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from workspace.errors import InvalidArgument


class LeaseAction(enum.StrEnum):
    """What expiry does to a workspace (a project's ``lease_action``)."""

    STOP = "STOP"
    DESTROY = "DESTROY"


def iso_time(epoch_s: float) -> str:
    """``2026-11-30T08:00:00Z``."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: float) -> str:
    """``72h``, ``1h30m``, ``45s`` (whole units, largest first)."""
    left = int(seconds)
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def _limit(project: str, max_s: int) -> str:
    where = f"project {project}'s" if project else "the"
    return f"{where} maximum lease of {duration_text(max_s)}"


def new_lease_end(
    requested_s: int, default_s: int, max_s: int, now: float, project: str = ""
) -> float:
    """When a new workspace's lease ends (0 = no lease).

    ``requested_s`` 0 takes the project's default; a project with a maximum and no
    default gives the maximum; longer than the maximum is refused."""
    if requested_s < 0:
        raise InvalidArgument(f"a lease must not be negative, got {requested_s} s")
    if requested_s == 0:
        requested_s = min(default_s, max_s) if default_s and max_s else default_s or max_s
    if max_s and requested_s > max_s:
        raise InvalidArgument(
            f"a lease of {duration_text(requested_s)} is longer than {_limit(project, max_s)}"
        )
    return now + requested_s if requested_s else 0.0


def extended_end(
    name: str, current_end: float, add_s: int, max_s: int, now: float, project: str = ""
) -> float:
    """The end of a lease extended by ``add_s`` (from its end, or from now once it has
    ended); never more than the project's maximum from now."""
    if add_s <= 0:
        raise InvalidArgument(f"extend a lease by more than 0 s, got {add_s} s")
    if not current_end:
        raise InvalidArgument(f"workspace {name} has no lease; there is nothing to extend")
    end = max(current_end, now) + add_s
    if max_s and end > now + max_s:
        room = max(0, int(now + max_s - max(current_end, now)))
        raise InvalidArgument(
            f"the lease of workspace {name} would end at {iso_time(end)}, more than "
            f"{_limit(project, max_s)} from now; it can be extended by at most "
            f"{duration_text(room)}"
        )
    return end
