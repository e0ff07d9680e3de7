"""Usage: what a workspace consumes in each state, and the figures over a time window.

The rule (docs/design/usage.md): memory and disk count from the moment capacity is
claimed on a node (SCHEDULED) until the workspace is TERMINATED and its claim released,
whatever it does in between (the node keeps them for it); CPUs count only while the
workspace is RUNNING. Pure functions: the store records intervals of constant
consumption (ops/metering.py), ops/usage.py adds them up with these.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from workspace.domain.states import State

SECONDS_PER_HOUR = 3600.0
MIB_PER_GIB = 1024
BYTES_PER_GIB = 1024**3


@dataclass(frozen=True)
class Consumption:
    """What a workspace holds at one moment (all 0: nothing)."""

    cpus: int = 0
    memory_mib: int = 0
    disk_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.cpus or self.memory_mib or self.disk_bytes)


NOTHING = Consumption()


def consumption(
    state: State, node: str, cpus: int, memory_mib: int, disk_bytes: int
) -> Consumption:
    """What a workspace in ``state`` on ``node`` ("" = not placed) consumes."""
    if not node or state in (State.PENDING, State.TERMINATED):
        return NOTHING
    return Consumption(cpus if state is State.RUNNING else 0, memory_mib, disk_bytes)


class Grouping(enum.StrEnum):
    WORKSPACE = "workspace"
    USER = "user"
    PROJECT = "project"


@dataclass(frozen=True)
class Interval:
    """A stretch of constant consumption of one workspace; ``ended_at`` 0 = still open."""

    workspace_id: str
    workspace_name: str
    owner: str
    project: str
    use: Consumption
    started_at: float
    ended_at: float = 0.0
    preemptible: bool = False  # consumed by a workspace of the preemptible class
    # When ``project`` was deleted, if the interval was of a project of that name deleted
    # since (0: the project of that name now, or none).
    project_deleted_at: float = 0.0


@dataclass(frozen=True)
class UsageRow:
    """Totals of one workspace, user or project over the window."""

    key: str  # workspace id, user or project ("" = no project)
    name: str = ""  # the workspace's name (grouping by workspace)
    owner: str = ""  # grouping by workspace or user
    project: str = ""  # grouping by workspace or project
    core_hours: float = 0.0
    memory_gib_hours: float = 0.0
    disk_gib_hours: float = 0.0
    # The preemptible class, counted apart (the figures above are the normal class's).
    preemptible_core_hours: float = 0.0
    preemptible_memory_gib_hours: float = 0.0
    preemptible_disk_gib_hours: float = 0.0
    # Grouping by workspace or project: when ``project`` was deleted, if the row's is a
    # project of that name deleted since (0: the project of that name now, or none). A
    # project deleted and made again under its name is a new one: a row of its own.
    project_deleted_at: float = 0.0


@dataclass(frozen=True)
class UsageReport:
    since: float  # epoch s (0 = from the first record)
    until: float  # epoch s
    by: Grouping
    rows: tuple[UsageRow, ...]
    next_page_token: str = ""  # "" after the last page (ops/usage.py)


def overlap_s(iv: Interval, since: float, until: float, now: float) -> float:
    """Seconds of ``iv`` inside [since, until); an open interval runs until ``now``."""
    end = iv.ended_at if iv.ended_at else now
    return max(0.0, min(end, until) - max(iv.started_at, since))


def totals(
    intervals: Iterable[Interval], since: float, until: float, now: float, by: Grouping
) -> tuple[UsageRow, ...]:
    """The intervals clipped to [since, until) and summed per workspace, user or project,
    sorted by key (only groups with some use); the preemptible class's apart. A project
    deleted and made again under its name is two groups: the old one (or ones, oldest
    first) before the one of the name now."""
    sums: dict[tuple[str, float], list[float]] = {}
    meta: dict[tuple[str, float], tuple[str, str, str]] = {}
    for iv in intervals:
        hours = overlap_s(iv, since, until, now) / SECONDS_PER_HOUR
        if hours <= 0:
            continue
        deleted = iv.project_deleted_at or math.inf  # the project now sorts last
        if by is Grouping.WORKSPACE:
            key, info = (iv.workspace_id, deleted), (iv.workspace_name, iv.owner, iv.project)
        elif by is Grouping.USER:
            key, info = (iv.owner, 0.0), ("", iv.owner, "")
        else:
            key, info = (iv.project, deleted), ("", "", iv.project)
        acc = sums.setdefault(key, [0.0] * 6)
        at = 3 if iv.preemptible else 0
        acc[at] += iv.use.cpus * hours
        acc[at + 1] += iv.use.memory_mib / MIB_PER_GIB * hours
        acc[at + 2] += iv.use.disk_bytes / BYTES_PER_GIB * hours
        meta[key] = info
    return tuple(
        UsageRow(
            key[0],
            *meta[key],
            core_hours=c,
            memory_gib_hours=m,
            disk_gib_hours=d,
            preemptible_core_hours=pc,
            preemptible_memory_gib_hours=pm,
            preemptible_disk_gib_hours=pd,
            project_deleted_at=key[1] if math.isfinite(key[1]) else 0.0,
        )
        for key, (c, m, d, pc, pm, pd) in sorted(sums.items())
    )
