"""Usage reports: core-, memory-GiB- and disk-GiB-hours per workspace, user or project
over a window, from the intervals recorded at every state change (ops/metering.py)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select

from workspace.domain.leases import iso_time
from workspace.domain.usage import (
    Consumption,
    Grouping,
    Interval,
    UsageReport,
    UsageRow,
    totals,
)
from workspace.errors import InvalidArgument
from workspace.identity import Identity, Kind
from workspace.ops import pages
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


@dataclass(frozen=True)
class Page:
    """Which rows of a report: at most ``size`` (0: all) after ``token``."""

    size: int = 0
    token: str = ""


def report(
    env: Env,
    owner: str | None,
    since: float = 0.0,
    until: float = 0.0,
    by: Grouping = Grouping.WORKSPACE,
    projects: Sequence[str] = (),
    page: Page = Page(),
) -> UsageReport:
    """Usage in [since, until) (until 0 = now): of what user ``owner`` sees, their
    workspaces and those of ``projects`` but the site's backfill ones (``owner`` None:
    every workspace, an admin's report). Open intervals count until now.

    Intervals are kept by project name: of a project, ``owner`` sees those begun since
    the project now of that name was made (none of a deleted one), not those of an
    older project deleted and made again under its name (``Scope.made``). An admin
    sees them all; the old project's are those before the new one was made, and are
    rows of their own (``UsageRow.project_deleted_at``).

    Paged as the List RPCs are, by key: ``page`` gives at most ``page.size`` rows after
    the key its token names, and the report the token of the next page. A token also
    holds the window's end, so the pages after the first of a report "until now" end
    where the first did (their figures add up to one report, not to several nows)."""
    pages.check_size(page.size)
    after = _read_token(page.token, by) if page.token else None
    now = env.clock()
    if after is not None and not until:
        until = after[0]
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
    rows = totals(intervals, since, until, now, by)
    if after is not None:
        rows = tuple(r for r in rows if _place(r) > after[1])
    more = bool(page.size) and len(rows) > page.size
    rows = rows[: page.size] if more else rows
    token = _token(until, by, _place(rows[-1])) if more else ""
    return UsageReport(since, until, by, rows, token)


def _place(row: UsageRow) -> tuple[str, float]:
    """Where ``row`` is in its report's order (``totals``): by key, and of one project
    name the deleted projects (oldest first) before the project of that name now."""
    return row.key, row.project_deleted_at or math.inf


def _token(until: float, by: Grouping, place: tuple[str, float]) -> str:
    """The token of the page after the row at ``place`` of a report ending at ``until``."""
    key, deleted = place
    return pages.encode("usage", repr(until), by.value, repr(deleted), key)


def _read_token(token: str, by: Grouping) -> tuple[float, tuple[str, float]]:
    """(the end of the window, the place of the row the page comes after) of ``token``."""
    until_text, grouping, deleted_text, key = pages.decode("usage", token, 4)
    until = pages.time_of(until_text)
    try:
        deleted = float(deleted_text)  # inf: the project of the name now
    except ValueError as exc:
        raise InvalidArgument(pages.NOT_OURS) from exc
    if until <= 0 or math.isnan(deleted) or deleted <= 0 or grouping not in _GROUPINGS:
        raise InvalidArgument(pages.NOT_OURS)
    if grouping != by.value:
        raise InvalidArgument(
            f"page_token is of a report by {grouping}, not by {by.value}: "
            "ask for the next page with the first page's arguments"
        )
    return until, (key, deleted)


_GROUPINGS = {g.value for g in Grouping}


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
    page: Page = Page(),
) -> UsageReport:
    """Usage of ``who``'s workspaces and of their projects' (certificate and membership)."""
    with env.store.read() as s:
        sc = scope(s, who)
    return report(env, sc.name, since, until, by, sorted(sc.projects), page)
