"""Site events, read back: the journal (store/journal.py writes it in the transaction of
each change) since a time, then followed as commits add to it; and its bound
(``event_retention``: a duration or a count of the newest events)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from workspace.config import parse_retention
from workspace.domain.events import EventFilter, SiteEvent
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.identity import Identity
from workspace.ops import clusters, preempt, queries
from workspace.ops.unit import Env
from workspace.store import EventRow, Node, Workspace
from workspace.store.site_events import DELETED_UPTO, EventMark

# Events read per query.
BATCH = 500
# A follower also looks at the table this often (events written by another process
# without a notice, or by a store without the service's notifier, wake no one).
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


def after(
    env: Env,
    last_id: int,
    since: float = 0.0,
    limit: int = BATCH,
    which: EventFilter | None = None,
) -> list[SiteEvent]:
    """Up to ``limit`` events after id ``last_id`` and at or after ``since`` that
    ``which`` wants, oldest first."""
    q = _filtered(select(EventRow).where(EventRow.id > last_id), which or EventFilter())
    if since:
        q = q.where(EventRow.at >= since)
    with env.store.read() as s:
        return [view(r) for r in s.execute(q.order_by(EventRow.id).limit(limit)).scalars()]


def _page(
    env: Env, last_id: int, since: float, which: EventFilter, dated_upto: int
) -> tuple[list[SiteEvent], int]:
    """Up to ``BATCH`` events ``which`` wants after id ``last_id`` (of those up to id
    ``dated_upto``, only the ones at or after ``since``), and the id to read on from: the
    last one's, or (a page not full) the newest event's when it was read, so that a filter
    matching few events does not read the same other rows at each wake."""
    with env.store.read() as s:
        # The newest id first: the page below then reads no event after it.
        top = s.execute(select(func.max(EventRow.id))).scalar() or 0
        q = _filtered(select(EventRow).where(EventRow.id > last_id, EventRow.id <= top), which)
        if since:
            q = q.where(or_(EventRow.at >= since, EventRow.id > dated_upto))
        batch = [view(r) for r in s.execute(q.order_by(EventRow.id).limit(BATCH)).scalars()]
    return batch, batch[-1].id if len(batch) == BATCH else max(top, last_id)


def newest_id(env: Env) -> int:
    """The id of the newest event (0: none)."""
    with env.store.read() as s:
        return s.execute(select(func.max(EventRow.id))).scalar() or 0


def before_since(env: Env, since: float, upto: int) -> int:
    """The id the events at or after ``since`` come after, of those up to id ``upto``
    (the newest when the stream opened): the first one's, less one, found through the
    index on ``at`` (``upto`` when there is none). Reading by id from 0 with ``at >=
    since`` only as a filter walked every older event first: the planner takes the id
    order, expecting the newer events spread through it, when they are all at its end (a
    month of events kept, `ws events --since 1h`).

    ``id + 0``: a plain ``min(id)`` is planned as the first id in id order whose ``at``
    fits, the same walk. Writers commit one at a time, each event's id given in its
    transaction, so an event committed later has a higher id than any read now."""
    with env.store.read() as s:
        first = s.execute(select(func.min(EventRow.id + 0)).where(EventRow.at >= since)).scalar()
    return upto if first is None or first > upto else int(first) - 1


def check_resume(env: Env, after_id: int, whole: bool) -> None:
    """FailedPrecondition unless the stream can go on after ``after_id``: an id past the
    newest (a site restored from a backup, or made anew, numbers its events again) was
    waited for in silence, and the events that took its ids again never sent. ``whole``
    (a stream of every event): also when the retention deleted an event after
    ``after_id`` (it is below the highest id deleted, ``EventMark`` ``DELETED_UPTO``),
    which the stream went on past without a word. Not when the ids right after it are
    merely missing: on PostgreSQL a transaction that rolled back after writing its
    events leaves their ids unused, and a resume across them was refused as if they had
    been deleted. (A filtered stream's last id may lie far behind while it missed
    nothing: the events since were not of its filter, and whether the deleted ones were
    is not known.) Each refusal says where the stream can start instead."""
    with env.store.read() as s:
        newest = s.execute(select(func.max(EventRow.id))).scalar() or 0
        deleted = s.get(EventMark, DELETED_UPTO)
        upto = deleted.value if deleted else 0
        first = s.execute(select(func.min(EventRow.id)).where(EventRow.id > upto)).scalar()
    if after_id > newest:
        raise FailedPrecondition(
            f"no event has id {after_id}: the site's newest is {newest} (a site restored "
            "from a backup or made anew numbers its events again); start from a time "
            "(--since) or from the oldest kept (no --after)"
        )
    if whole and after_id < upto:
        raise FailedPrecondition(
            f"the events after id {after_id} are no longer kept up to id {upto} "
            f"(event_retention deletes the oldest): the oldest kept is {first or newest}; "
            f"--after {upto} goes on from it, without those deleted"
        )


def check_filter(which: EventFilter) -> None:
    """InvalidArgument for a kind that is neither a kind nor a family of kinds."""
    wrong = which.unknown_kinds()
    if wrong:
        raise InvalidArgument(wrong)


def _filtered(q: Select[Any], which: EventFilter) -> Select[Any]:
    if which.kinds:
        # Each kind once: a filter naming a kind hundreds of times (every one checked
        # against the known ones) made SQLite refuse the query ("Expression tree is too
        # large"), an INTERNAL error; the known kinds bound it.
        q = q.where(or_(*(_kind_is(k) for k in dict.fromkeys(which.kinds))))
    if which.workspace:
        w = which.workspace
        q = q.where(or_(EventRow.workspace_id == w, EventRow.workspace_name == w))
    if which.node:
        q = q.where(EventRow.node == which.node)
    if which.cluster:
        q = q.where(EventRow.cluster == which.cluster)
    return q


def _kind_is(kind: str) -> ColumnElement[bool]:
    """The kind itself, or a kind of that family (its first word and a dot)."""
    return or_(EventRow.kind == kind, EventRow.kind.startswith(kind + ".", autoescape=True))


def watch(
    env: Env,
    since: float,
    follow: bool,
    gone: Callable[[], bool] = lambda: False,
    which: EventFilter | None = None,
    after_id: int = 0,
) -> Iterator[SiteEvent]:
    """The events that ``which`` wants (InvalidArgument for an unknown kind), in commit
    order (their ids): with ``after_id``, every one after that id, whatever its time;
    else those at or after ``since`` (0: all kept) of the events committed when the
    stream opens. With ``follow``, then each one committed later, whatever its time (a
    node's trust records keep the node's clock, a node cut off for a while sends them
    late), until ``gone()`` or the service stops."""
    which = which or EventFilter()
    check_filter(which)
    last = max(0, after_id)
    if last:
        since = 0.0
        check_resume(env, last, which == EventFilter())
    dated_upto = newest_id(env) if since else 0
    if since:  # start at the first event of the time asked for
        last = before_since(env, since, dated_upto)
    while True:
        seen = env.notifier.site_event_generation()  # before reading: nothing is missed
        batch, upto = _page(env, last, since, which, dated_upto)
        for e in batch:
            last = e.id
            yield e
        last = upto
        if len(batch) == BATCH:
            continue
        if not follow:
            return
        while not (gone() or env.notifier.closed):
            if env.notifier.wait_site_events(seen, POLL_S) != seen:
                break
            if after(env, last, 0.0, 1, which):
                break
        else:
            return


def of_site(
    env: Env,
    who: Identity,
    since: float,
    follow: bool,
    gone: Callable[[], bool] = lambda: False,
    which: EventFilter | None = None,
    after_id: int = 0,
) -> Iterator[SiteEvent]:
    """``watch`` as `ws-admin events` asks it: a cluster in ``which`` may be named (id or
    name), found as GetCluster finds it for ``who`` (NotFound if none), after the kinds
    are checked; a workspace named must be one the site has or had (NotFound if neither
    a workspace nor a kept event has that id or name), and so must a node (a node row,
    or a kept event of it: one removed still streams its history)."""
    which = which or EventFilter()
    if which.cluster:
        check_filter(which)
        which = dataclasses.replace(which, cluster=clusters.get(env, who, which.cluster).id)
    if which.workspace:
        check_filter(which)
        _check_known_workspace(env, which.workspace)
    if which.node:
        check_filter(which)
        _check_known_node(env, which.node)
    yield from watch(env, since, follow, gone, which, after_id)


def _known(env: Env, *queries: Select[Any]) -> bool:
    """Whether any of ``queries`` finds a row."""
    with env.store.read() as s:
        return any(s.execute(q.limit(1)).first() is not None for q in queries)


def _check_known_workspace(env: Env, ref: str) -> None:
    """NotFound unless a workspace row (any state, any owner) or a kept event has ``ref``
    as its id or name: a workspace destroyed long ago still streams its history."""
    if not _known(
        env,
        select(Workspace.id).where(or_(Workspace.id == ref, Workspace.name == ref)),
        select(EventRow.id).where(
            or_(EventRow.workspace_id == ref, EventRow.workspace_name == ref)
        ),
    ):
        raise NotFound(f"no workspace {ref!r}: none has that id or name, and no event names it")


def _check_known_node(env: Env, name: str) -> None:
    """NotFound unless a node row or a kept event has ``name`` as its node: `--node`
    with a typo was an empty stream, a node where nothing happened."""
    if not _known(
        env,
        select(Node.name).where(Node.name == name),
        select(EventRow.id).where(EventRow.node == name),
    ):
        raise NotFound(
            f"no node {name!r}: none has that name, and no event names it "
            "(`ws-admin node list` shows the site's)"
        )


def of_workspace(
    env: Env,
    who: Identity,
    ref: str,
    since: float,
    follow: bool,
    gone: Callable[[], bool] = lambda: False,
    kinds: tuple[str, ...] = (),
    after_id: int = 0,
) -> Iterator[SiteEvent]:
    """``watch`` of one workspace's events (of ``kinds``, if any): workspace ``ref`` (id
    or name) as GetWorkspace finds it for ``who`` (NotFound if it may not see it)."""
    target = _subject(ref, kinds, "workspace", lambda: queries.get(env, who, ref).id)
    events = watch(env, since, follow, gone, EventFilter(kinds, workspace=target), after_id)
    yield from _while_seen(env, who, events, lambda: queries.get(env, who, target))


def of_cluster(
    env: Env,
    who: Identity,
    ref: str,
    since: float,
    follow: bool,
    gone: Callable[[], bool] = lambda: False,
    kinds: tuple[str, ...] = (),
    after_id: int = 0,
) -> Iterator[SiteEvent]:
    """``watch`` of one cluster's events (its members' and its own; of ``kinds``, if
    any): cluster ``ref`` (id or name) as GetCluster finds it for ``who``."""
    target = _subject(ref, kinds, "cluster", lambda: clusters.get(env, who, ref).id)
    events = watch(env, since, follow, gone, EventFilter(kinds, cluster=target), after_id)
    yield from _while_seen(env, who, events, lambda: clusters.get(env, who, target))


def _while_seen(
    env: Env, who: Identity, events: Iterator[SiteEvent], check: Callable[[], object]
) -> Iterator[SiteEvent]:
    """``events`` as ``who`` may see them (preempt.as_users_see, for a user), while they
    may still see their subject: ``check()`` (NotFound if not, as a new call would be
    told) runs again before an event whenever site events were written since it last
    ran, so a member an admin takes out of the subject's project (an event too) gets
    nothing of it from then on."""
    checked = env.notifier.site_event_generation()
    for e in events:
        now = env.notifier.site_event_generation()
        if now != checked:
            check()
            checked = now
        yield e if who.admin else preempt.as_users_see(e)


def _subject(ref: str, kinds: tuple[str, ...], what: str, find: Callable[[], str]) -> str:
    """The id ``find()`` gives for ``ref``, once the request is checked (a ref given,
    every kind known): a wrong kind is said before any lookup."""
    if not ref:
        raise InvalidArgument(f"the {what}'s id or name is required")
    check_filter(EventFilter(kinds))
    return find()


def prune(env: Env) -> int:
    """Delete what ``event_retention`` no longer keeps; returns how many. The highest id
    deleted is kept (``EventMark`` ``DELETED_UPTO``): ``check_resume`` refuses a resume
    after an id below it.

    The newest event is always kept, however old: SQLite gives a new row the largest id
    plus one, so an idle site whose events had all been pruned would give its next
    events ids a follower (``--follow``, which reads on from the last id it saw) has
    already passed, and it would miss them."""
    count, seconds = parse_retention(env.cfg.event_retention)
    with env.store.write() as s:
        newest = s.execute(select(func.max(EventRow.id))).scalar() or 0
        if seconds:
            # The newest event stays, however old its time: SQLite gives a new row the
            # highest id plus one, so deleting it would give its id to the next event, and
            # a follower resuming after that id (``after_id``) would not be sent that one.
            cut = env.clock() - seconds
            return _delete(s, and_(EventRow.at < cut, EventRow.id < newest))
        # The count-th newest id, not the newest less the count: ids have gaps on
        # PostgreSQL, and fewer events than the count were kept.
        floor = s.execute(
            select(EventRow.id).order_by(EventRow.id.desc()).offset(count).limit(1)
        ).scalar()
        if floor is None:
            return 0
        return _delete(s, EventRow.id <= floor)


def _delete(s: Session, which: ColumnElement[bool]) -> int:
    """Delete the events ``which`` matches, raising the mark of the highest id deleted."""
    upto = s.execute(select(func.max(EventRow.id)).where(which)).scalar()
    if upto is None:
        return 0
    result = s.execute(delete(EventRow).where(which))
    mark = s.get(EventMark, DELETED_UPTO)
    if mark is None:
        s.add(EventMark(name=DELETED_UPTO, value=upto))
    elif mark.value < upto:
        mark.value = upto
    return int(getattr(result, "rowcount", 0) or 0)
