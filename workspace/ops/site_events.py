"""Site events, read back: the journal (store/journal.py writes it in the transaction of
each change) since a time, then followed as commits add to it; and its bound
(``event_retention``: a duration or a count of the newest events)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sqlalchemy import delete, func, select

from workspace.config import parse_retention
from workspace.domain.events import SiteEvent
from workspace.ops.unit import Env
from workspace.store import EventRow

# Events read per query.
BATCH = 500
# A follower also looks at the table this often (events written outside a unit of work,
# e.g. trust decisions kept after a refusal, wake no one).
POLL_S = 1.0


def view(r: EventRow) -> SiteEvent:
    return SiteEvent(
        id=r.id,
        at=r.at,
        kind=r.kind,
        who=r.who,
        workspace_id=r.workspace_id,
        workspace_name=r.workspace_name,
        node=r.node,
        cluster=r.cluster,
        subject=r.subject,
        state=r.state,
        previous=r.previous,
        reason=r.reason,
    )


def after(env: Env, last_id: int, since: float = 0.0, limit: int = BATCH) -> list[SiteEvent]:
    """Up to ``limit`` events after id ``last_id`` and at or after ``since``, oldest first."""
    q = select(EventRow).where(EventRow.id > last_id)
    if since:
        q = q.where(EventRow.at >= since)
    with env.store.read() as s:
        return [view(r) for r in s.execute(q.order_by(EventRow.id).limit(limit)).scalars()]


def watch(
    env: Env, since: float, follow: bool, gone: Callable[[], bool] = lambda: False
) -> Iterator[SiteEvent]:
    """The events since ``since`` (0: all kept); with ``follow``, then each new one, until
    ``gone()`` or the service stops."""
    last = 0
    while True:
        seen = env.notifier.site_event_generation()  # before reading: nothing is missed
        batch = after(env, last, since)
        for e in batch:
            last = e.id
            yield e
        if len(batch) == BATCH:
            continue
        if not follow:
            return
        while not (gone() or env.notifier.closed):
            if env.notifier.wait_site_events(seen, POLL_S) != seen:
                break
            if after(env, last, since, 1):
                break
        else:
            return


def prune(env: Env) -> int:
    """Delete what ``event_retention`` no longer keeps; returns how many."""
    count, seconds = parse_retention(env.cfg.event_retention)
    with env.store.write() as s:
        if seconds:
            cut = env.clock() - seconds
            return _deleted(s.execute(delete(EventRow).where(EventRow.at < cut)))
        newest = s.execute(select(func.max(EventRow.id))).scalar() or 0
        floor = newest - count
        if floor <= 0:
            return 0
        return _deleted(s.execute(delete(EventRow).where(EventRow.id <= floor)))


def _deleted(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
