"""Engine and session handling.

SQLite runs in WAL mode with synchronous=FULL (a commit is durable when it returns)
and busy timeouts. All writing transactions are serialised by one lock in this
process: SQLite has a single writer anyway, and it keeps a placement, its IP
allocations and its capacity claim in one atomic step. On PostgreSQL (psycopg 3) every
writing transaction also takes a transaction-level advisory lock first, so the writers
of all processes on the database take turns the same way (``engines.serialize_writes``);
the unique constraints remain the last line of defence. A database that cannot be
reached raises ``Unavailable`` (UNAVAILABLE to clients), never an internal error.

On start the schema is brought to the newest Alembic revision (``workspace.store.migrations``),
for a new database and an existing one alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from workspace.domain.events import SiteEvent
from workspace.errors import InvalidArgument
from workspace.store import bounds, engines, journal, macs, migrations, orders_gen

log = logging.getLogger("workspace.store")

# s.info key: what to run should the session's transaction roll back (``on_rollback``).
_ON_ROLLBACK = "store.on_rollback"


def on_rollback(s: Session, fn: Callable[[Session], None]) -> None:
    """Run ``fn(s)`` once after ``s``'s transaction rolled back (its own, not a
    SAVEPOINT's); forgotten when it commits. One listener for every session, installed
    with the store: listening on a session of its own cost a create more than its SQL."""
    s.info.setdefault(_ON_ROLLBACK, []).append(fn)


def _after_rollback(s: Session) -> None:
    if s.in_nested_transaction():
        return
    for fn in s.info.pop(_ON_ROLLBACK, ()):
        fn(s)


def _after_commit(s: Session) -> None:
    s.info.pop(_ON_ROLLBACK, None)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # Temporary tables in memory: an INSERT ... RETURNING (an allocated address) keeps its
    # returned rows in one, and SQLite's default opened and removed a file for it each
    # time, about 0.1 ms; the service's temporary data is small.
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def private_database(path: Path) -> None:
    """Make the SQLite file (and its -wal/-shm, which SQLite creates with the database's
    mode) readable by its owner only: 0600, in a directory made 0700 if we create it."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)


class Store:
    def __init__(self, url: str, migrate_in_child: bool = False) -> None:
        """``migrate_in_child``: run a needed schema migration in a child process (the
        service does, so that it never keeps Alembic in memory); else in this process."""
        url = engines.normalize_url(url)
        self.url = url
        path = engines.sqlite_file(url)
        if path is not None:
            private_database(path)
        self.engine: Engine = create_engine(url, **engines.engine_options(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "connect", engines.postgresql_session)
        if migrate_in_child:
            migrations.upgrade_in_child(self.engine)
        else:
            migrations.upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._sessions, "before_flush", bounds.check_flush)
        # Told the site events of each commit no unit of work publishes (``on_site_events``).
        self._event_listeners: list[Callable[[Sequence[SiteEvent]], None]] = []
        journal.install(self._sessions, self._committed)
        orders_gen.install(self._sessions)
        macs.install(self._sessions)
        event.listen(self._sessions, "after_rollback", _after_rollback)
        event.listen(self._sessions, "after_commit", _after_commit)
        self.write_lock = threading.RLock()
        # The database did not answer the last time it was asked (``Unavailable``), and
        # when it last came back (time.time(); 0: never away).
        self._away = False
        self._back_at = 0.0

    def on_site_events(self, listener: Callable[[Sequence[SiteEvent]], None]) -> None:
        """Call ``listener`` with the site events of each commit of a plain ``write``
        (a unit of work publishes its own: ops/unit.py); the service passes its notifier's
        ``site_events``, so that they are counted and wake readers as the others do."""
        self._event_listeners.append(listener)

    def _committed(self, events: Sequence[SiteEvent]) -> None:
        for listener in self._event_listeners:
            listener(events)

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def _translated(self, writes: bool = True) -> Iterator[None]:
        """Turn "the database cannot be reached" into ``Unavailable``: the caller may retry
        (a create with the same request id gets what the first attempt made, if it was
        committed after all); a NUL character in a text value into ``InvalidArgument``."""
        try:
            yield
        except Exception as exc:
            if engines.nul_in_text(exc):
                raise InvalidArgument("text values must not contain NUL characters") from exc
            if engines.unavailable(exc):
                if not self._away:
                    log.warning("the store's database cannot be reached: %s", engines.reason(exc))
                self._away = True
                raise engines.away(writes) from exc
            raise
        if self._away:
            self._away = False
            self._back_at = time.time()
            log.warning("the store's database answers again")

    def translated(self) -> contextlib.AbstractContextManager[None]:
        """What ``read`` and ``write`` turn a database error into, for a block inside one
        (ops/group_commit.py: one create of a batch, answered with its own error)."""
        return self._translated()

    def reachable_since(self) -> float:
        """When the database last came back after an outage, or writes after a stall (0:
        never away), asking it first if it was away at the last try; raises
        ``Unavailable`` while it still is. Node liveness counts heartbeats from then on:
        agents could not report meanwhile."""
        if self._away:
            with self.read() as s:
                s.execute(text("SELECT 1"))
        return self._back_at

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._translated(writes=False), self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One serialised read-write transaction; commits on success, rolls back on error."""
        with self.write_lock, self._translated(), self._sessions() as session, session.begin():
            asked = time.monotonic()
            engines.serialize_writes(session)
            waited = time.monotonic() - asked
            if waited >= engines.WRITE_STALL_S:
                # Another process held the site's write lock that long (a replica stopped
                # inside a transaction, until the server ended its session): no heartbeat
                # could be recorded meanwhile, as when the database was away.
                self._back_at = time.time()
                log.warning(
                    "a write waited %.1f s for the site's write lock (another replica held "
                    "it); node liveness gives agents their grace again",
                    waited,
                )
            yield session

    def close(self) -> None:
        self.engine.dispose()
