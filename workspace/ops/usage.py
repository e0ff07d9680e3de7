"""Usage reports: core-, memory-GiB- and disk-GiB-hours per workspace, user or project
over a window, from the intervals recorded at every state change (ops/metering.py)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from sqlalchemy import or_, select

from workspace.domain.leases import iso_time
from workspace.domain.usage import Consumption, Grouping, Interval, UsageReport, totals
from workspace.errors import InvalidArgument
from workspace.identity import Identity, Kind
from workspace.ops.projects import Scope, deletion_times, project_times, scope
from workspace.ops.unit import Env
from workspace.store import UsageInterval


def check_window(since: float, until: float, now: float) -> None:
    """``until`` 0 is now: a ``since`` after now, with no ``until``, is refused as a
    reversed window is (it reported "none" from a later time to an earlier one)."""
    if since < 0 or until < 0:
        raise InvalidArgument("since and until must not be before 1970")
    if until and until <= since:
        raise InvalidArgument("until must be later than since")
    if not until and since > now:
        raise InvalidArgument(
            f"since {iso_time(since)} is in the future (now {iso_time(now)}); "
            "there is no usage after now"
        )


def report(
    env: Env,
    owner: str | None,
    since: float = 0.0,
    until: float = 0.0,
    by: Grouping = Grouping.WORKSPACE,
    projects: Sequence[str] = (),
) -> UsageReport:
    """Usage in [since, until) (until 0 = now): of what user ``owner`` sees, their
    workspaces and those of ``projects`` but the site's backfill ones (``owner`` None:
    every workspace, an admin's report). Open intervals count until now.

    Intervals are kept by project name: of a project, ``owner`` sees those begun since
    the project now of that name was made (none of a deleted one), not those of an
    older project deleted and made again under its name (``Scope.made``). An admin
    sees them all; the old project's are those before the new one was made, and are
    rows of their own (``UsageRow.project_deleted_at``)."""
    now = env.clock()
    check_window(since, until, now)
    until = until or now
    q = select(UsageInterval).where(
        UsageInterval.started_at < until,
        or_(UsageInterval.ended_at == 0, UsageInterval.ended_at > since),
    )
    with env.store.read() as s:
        if owner is not None:  # the rows its caller may see, as every list shows them
            who = Identity(Kind.USER, owner)
            sc = Scope(who, frozenset(projects), made=project_times(s, projects))
            seen = sc.clause(UsageInterval, made=UsageInterval.started_at)
            q = q.where(seen) if seen is not None else q
        found = list(s.execute(q).scalars())
        deletions = deletion_times(s, (iv.project for iv in found))
        intervals = [
            Interval(
                iv.workspace_id,
                iv.workspace_name,
                iv.owner,
                iv.project,
                Consumption(iv.cpus, iv.memory_mib, iv.disk_bytes),
                iv.started_at,
                iv.ended_at,
                bool(iv.preemptible),
                deleted_after(deletions.get(iv.project, ()), iv.started_at),
            )
            for iv in found
        ]
    return UsageReport(since, until, by, totals(intervals, since, until, now, by))


def deleted_after(deleted: Sequence[float], started_at: float) -> float:
    """When the project an interval begun at ``started_at`` was of was deleted, of the
    deletion times of its name (``deleted``, oldest first): the first at or after it
    (0: none, the project of the name now)."""
    i = bisect.bisect_left(deleted, started_at)
    return deleted[i] if i < len(deleted) else 0.0


def report_for(
    env: Env,
    who: Identity | str,
    since: float = 0.0,
    until: float = 0.0,
    by: Grouping = Grouping.WORKSPACE,
) -> UsageReport:
    """Usage of ``who``'s workspaces and of their projects' (certificate and membership)."""
    with env.store.read() as s:
        sc = scope(s, who)
    return report(env, sc.name, since, until, by, sorted(sc.projects))
