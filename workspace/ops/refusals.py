"""Refused requests as site events: a refusal rolls its transaction back (nothing of the
request is kept), so the unit of work (ops/unit.py) records it here, in a transaction of
its own, and publishes it. Only refusals are recorded — no capacity, over a quota, an
untrusted image — not mistakes in a request (invalid arguments, unknown names)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from workspace import callctx
from workspace.domain.events import Kind, Refusal, SiteEvent
from workspace.errors import PermissionDenied, ResourceExhausted, WorkspaceError
from workspace.ops.events import Notifier
from workspace.store import Store, Workspace, journal

log = logging.getLogger("workspace.ops.refusals")


def refusal_of(exc: BaseException) -> Refusal | None:
    """Which kind of refusal ``exc`` is (None: not a refusal)."""
    if isinstance(exc, ResourceExhausted):
        return Refusal.QUOTA if " quota " in exc.message else Refusal.CAPACITY
    if isinstance(exc, PermissionDenied) and "trust" in exc.message:
        return Refusal.TRUST
    return None


def refused(
    exc: WorkspaceError, rows: Iterable[Workspace], now: float, subject: str = ""
) -> list[SiteEvent]:
    """One event per workspace the refused request would have made (``rows``: those made
    or changed before it was refused), or one naming ``subject`` if there were none;
    [] if ``exc`` is not a refusal."""
    why = refusal_of(exc)
    if why is None:
        return []
    kind = (Kind.QUOTA_REFUSED if why is Refusal.QUOTA else Kind.WORKSPACE_REFUSED).value
    who = callctx.current().who
    subjects: dict[str, tuple[str, str, str]] = {}
    for w in rows:
        subjects.setdefault(w.id, (w.name, w.cluster or "", w.image or ""))
    named = list(subjects.values()) or [("", "", subject)]
    return [
        SiteEvent(
            at=now,
            kind=kind,
            who=who,
            workspace_id="",  # the id was never kept: it names nothing
            workspace_name=name,
            cluster=cluster,
            subject=image,
            state=why.value,
            reason=exc.message,
        )
        for name, cluster, image in named
    ]


def record(store: Store, notifier: Notifier, events: list[SiteEvent]) -> None:
    """Write and publish refusal events; never raises (the refusal itself is the answer)."""
    try:
        with store.write() as s:
            journal.owner_publishes(s)  # published below, also when the store tells none
            for e in events:
                journal.add(s, e)
        notifier.site_events(events)
    except Exception:
        log.exception("cannot record a refusal as a site event")


@contextlib.contextmanager
def recorded(
    store: Store, notifier: Notifier, clock: Callable[[], float], subject: str
) -> Iterator[None]:
    """Record a refusal raised in the block (outside a unit of work: an image import)."""
    try:
        yield
    except WorkspaceError as exc:
        events = refused(exc, (), clock(), subject)
        if events:
            record(store, notifier, events)
        raise
