"""The site-event table (written by store/journal.py, read by ops/site_events.py).

Kept apart from models.py, on the same metadata: ``workspace.store`` imports it, so the
migrations and ``Base.metadata`` know it."""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from workspace.store.models import Base

# The ``EventMark`` row of the highest event id the retention deleted.
DELETED_UPTO = "deleted_upto"


class EventRow(Base):
    """One site event; ``id`` orders them by commit (bounded by ``event_retention``)."""

    __tablename__ = "site_events"
    __table_args__ = (
        Index("ix_event_at", "at"),
        Index("ix_event_workspace", "workspace_id"),
        Index("ix_event_cluster", "cluster"),
        # `ws events NAME` matches the id or the name (ops/site_events.py ``_filtered``):
        # without it, an OR that scans every kept event.
        Index("ix_event_workspace_name", "workspace_name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    who: Mapped[str] = mapped_column(String(255), default="")
    workspace_id: Mapped[str] = mapped_column(String(32), default="")
    workspace_name: Mapped[str] = mapped_column(String(63), default="")
    node: Mapped[str] = mapped_column(String(255), default="")
    cluster: Mapped[str] = mapped_column(String(32), default="")
    subject: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16), default="")
    previous: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(String(1024), default="")


class EventMark(Base):
    """A named event id: ``DELETED_UPTO``, the highest one ``event_retention`` deleted
    (ops/site_events.py ``prune``). A resume after an id below it is refused
    (``check_resume``); the oldest kept id less one is not that bound, for ids have gaps
    on PostgreSQL (a sequence does not give back the ids of a transaction, or a
    SAVEPOINT, that rolled back after writing its events)."""

    __tablename__ = "event_marks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)
