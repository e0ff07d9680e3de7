"""Lease rules as pure functions (docs/design/usage.md): how long a new workspace may
live, how far a lease may be extended, and how a lease's end reads."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from workspace.errors import FailedPrecondition, InvalidArgument


class LeaseAction(enum.StrEnum):
    """What expiry does to a workspace (a project's ``lease_action``)."""

    STOP = "STOP"
    DESTROY = "DESTROY"


# The reason a workspace shows once its lease ended (it keeps it when stopped or gone).
EXPIRED = "lease expired at "


def iso_time(epoch_s: float) -> str:
    """``2026-11-30T08:00:00Z``."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# From two days up a duration reads in days ("100d", "3d12h"); below, in hours ("36h").
DAYS_FROM_S = 2 * 86400


def duration_text(seconds: float) -> str:
    """A duration as a person writes one (what `--lease` and `ws lease extend` read,
    common.duration_s), every unit whole, largest first and exact: ``45s``, ``1h30m``,
    ``36h``, ``3d``, ``100d``, ``2d12h``. Days from two days up (``DAYS_FROM_S``): a
    refusal of ``--lease 100d`` said "2400h", which nobody wrote or reads at a glance;
    below two days, hours (a shift of ``36h``, not ``1d12h``). The one helper every
    lease duration the service or the CLIs print goes through; JSON keeps seconds."""
    left = int(seconds)
    units: tuple[tuple[str, int], ...] = (("h", 3600), ("m", 60), ("s", 1))
    if left >= DAYS_FROM_S:
        units = (("d", 86400), *units)
    parts = []
    for unit, size in units:
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def site_maximum(site_max_s: int) -> str:
    """How a refusal names the site's maximum lease."""
    return f"the site's maximum lease of {duration_text(site_max_s)} (limits.max_lease_s)"


def _limit(project: str, max_s: int, site_max_s: int) -> tuple[int, str]:
    """The longest lease (0: none) and how to name it: the project's maximum, or the
    site's (``limits.max_lease_s``) where that is shorter or the project sets none."""
    if site_max_s and (not max_s or site_max_s < max_s):
        return site_max_s, site_maximum(site_max_s)
    where = f"project {project}'s" if project else "the"
    return max_s, f"{where} maximum lease of {duration_text(max_s)}"


def new_lease_end(
    requested_s: int,
    default_s: int,
    max_s: int,
    now: float,
    project: str = "",
    site_max_s: int = 0,
) -> float:
    """When a new workspace's lease ends (0 = no lease).

    ``requested_s`` 0 takes the project's default; a project with a maximum and no
    default gives the maximum; a lease asked for longer than the maximum (the project's,
    or the site's ``site_max_s`` for any lease) is refused. A default is cut to the
    maximum: the site's may have been lowered below a project's default since the
    project was set, and the user asked for no lease to shorten."""
    if requested_s < 0:
        raise InvalidArgument(f"a lease must not be negative, got {requested_s} s")
    longest, named = _limit(project, max_s, site_max_s)
    if requested_s == 0:
        requested_s = min(default_s, max_s) if default_s and max_s else default_s or max_s
        if longest:
            requested_s = min(requested_s, longest)
    if longest and requested_s > longest:
        raise InvalidArgument(f"a lease of {duration_text(requested_s)} is longer than {named}")
    return now + requested_s if requested_s else 0.0


def check_extension(add_s: int) -> None:
    """InvalidArgument unless ``add_s`` (how much longer a lease is to be) is positive."""
    if add_s <= 0:
        raise InvalidArgument(f"extend a lease by more than 0 s, got {add_s} s")


def extended_end(
    name: str,
    current_end: float,
    add_s: int,
    max_s: int,
    now: float,
    project: str = "",
    site_max_s: int = 0,
) -> float:
    """The end of a lease extended by ``add_s`` (from its end, or from now once it has
    ended); never more than the project's maximum (or the site's) from now."""
    check_extension(add_s)
    if not current_end:
        # The request is well formed; the workspace's state refuses it (as for a start
        # after the lease ended): FAILED_PRECONDITION (docs/api.md).
        raise FailedPrecondition(
            f"workspace {name} has no lease; there is nothing to extend (a lease is given "
            "when a workspace is created: `ws create --lease DURATION`, or its project's "
            "default lease)"
        )
    longest, named = _limit(project, max_s, site_max_s)
    start = max(current_end, now)
    if longest and start + add_s > now + longest:
        left = max(0, int(now + longest - start))
        if left >= 3600:  # to the minute below: "6d12h14m", not "6d12h14m27s"
            left -= left % 60
        room = f"it can be extended by at most {duration_text(left)}"
        if not left:  # "at most 0s": it ends at the maximum from now already, or later
            room = (
                f"it cannot be extended now: it ends at {iso_time(start)}, no earlier than "
                "that maximum from now"
            )
        if add_s > longest:  # (its end may be past what a date can say)
            raise InvalidArgument(
                f"extending the lease of workspace {name} by {duration_text(add_s)} goes "
                f"beyond {named}; {room}"
            )
        raise InvalidArgument(
            f"the lease of workspace {name} would end at {iso_time(start + add_s)}, more "
            f"than {named} from now; {room}"
        )
    return start + add_s
