"""What differs between the store's two engines, SQLite and PostgreSQL, in one place.

- ``normalize_url``: ``postgresql://`` and ``postgres://`` URLs name SQLAlchemy's psycopg 3
  dialect (``postgresql+psycopg://``), the driver the service ships with.
- ``engine_options``: SQLite gets its thread settings; PostgreSQL a pool fit for a
  service (pre-ping, so that connections a restarted server dropped are replaced at
  checkout instead of failing a request; a bounded wait for a connection; a connect
  timeout).
- ``serialize_writes``: the first statement of every writing transaction on PostgreSQL
  takes a transaction-level advisory lock, so that writing transactions of every process
  on the database run one at a time, as SQLite's single writer makes them do
  (docs/design/store.md, "PostgreSQL").
- ``unavailable``: whether a database error means "the database cannot be reached now"
  (worth retrying: UNAVAILABLE to a client), not a bug (INTERNAL); ``nul_in_text``:
  whether it is PostgreSQL refusing a NUL character in a text value (INVALID_ARGUMENT).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from workspace import callctx
from workspace.errors import DATABASE_AWAY, Unavailable

PSYCOPG = "postgresql+psycopg"

# The advisory locks of the store, as (classid, objid) pairs of pg_advisory_xact_lock(int,
# int): 0x5753 is "WS". Transaction-level: released by the commit or rollback, and by the
# server when the connection dies, so a crashed process never leaves one behind.
LOCK_CLASS = 0x5753
WRITE_LOCK = 1
MIGRATION_LOCK = 2

# The PostgreSQL pool of one service process. Writes are serialised (one connection at a
# time writes); readers take the rest. Checkout waits at most POOL_TIMEOUT_S, then the
# request fails as UNAVAILABLE.
POOL_SIZE = 8
MAX_OVERFLOW = 24
POOL_TIMEOUT_S = 10
POOL_RECYCLE_S = 1800
CONNECT_TIMEOUT_S = 5
APPLICATION_NAME = "workspace-service"
# The server ends a session that sits idle inside a transaction this long (PostgreSQL's
# idle_in_transaction_session_timeout): a process stopped in the middle of a write (SIGSTOP,
# a frozen VM) holds the site-wide write lock, and every write of every replica would wait
# for it as long as it hangs. A transaction of the service runs its statements back to back
# (milliseconds apart); the stopped writer, resumed, finds its transaction gone
# (UNAVAILABLE: retrying is safe) and nothing of it committed.
IDLE_IN_TRANSACTION_S = 15.0

# SQLSTATE classes and codes that mean the server is away or not accepting work now:
# 08 connection exception, 53 insufficient resources (too many connections), 57P01-03
# admin shutdown / crash shutdown / cannot connect now (starting up or shutting down).
_AWAY_CLASSES = ("08", "53")
_AWAY_CODES = ("57P01", "57P02", "57P03")


def normalize_url(url: str) -> str:
    """``url`` with a bare PostgreSQL scheme turned into the psycopg 3 dialect; any other
    URL unchanged."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return PSYCOPG + "://" + url[len(scheme) :]
    return url


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store (None: PostgreSQL, or SQLite in memory)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def engine_options(url: str) -> dict[str, Any]:
    """Keyword arguments of ``create_engine`` for ``url`` (already normalized)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"check_same_thread": False, "timeout": 10}}
    if backend == "postgresql":
        return {
            "pool_pre_ping": True,
            "pool_size": POOL_SIZE,
            "max_overflow": MAX_OVERFLOW,
            "pool_timeout": POOL_TIMEOUT_S,
            "pool_recycle": POOL_RECYCLE_S,
            # the name admins see in pg_stat_activity, with the process it belongs to (as
            # the leader's session names it): which replica holds what
            "connect_args": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "application_name": f"{APPLICATION_NAME} {os.getpid()}",
            },
        }
    return {}


# A write that waited this long for the site's write lock (PostgreSQL: held by another
# replica) counts as the database having been away (``Store.reachable_since``): the
# heartbeats of that time could not be recorded. Past the default heartbeat interval.
WRITE_STALL_S = 6.0


def postgresql_session(dbapi_conn: Any, _record: Any) -> None:
    """Each new PostgreSQL connection of the store's pool: the idle-in-transaction limit
    (a SET, not a startup option, which a connection pooler in front may refuse)."""
    ms = int(IDLE_IN_TRANSACTION_S * 1000)
    with dbapi_conn.cursor() as cur:
        cur.execute(f"SET idle_in_transaction_session_timeout = {ms}")
    dbapi_conn.commit()


def serialize_writes(session: Session) -> None:
    """On PostgreSQL, wait for the store's write lock as the transaction's first statement
    (READ COMMITTED: every later statement sees what the previous holder committed)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:c, :o)"), {"c": LOCK_CLASS, "o": WRITE_LOCK}
        )


def open_transaction(session: Session) -> None:
    """Make the session's transaction a real one from here on, before its first SAVEPOINT.

    pysqlite (in its default mode) sends BEGIN only before the first INSERT, UPDATE or
    DELETE; a SAVEPOINT sent before that would open the transaction itself, and its
    RELEASE would commit it: each SAVEPOINT of a batch would be committed on its own.
    So on SQLite an explicit BEGIN goes first (deferred, as pysqlite's own: the write
    lock is taken at the first write). PostgreSQL's transaction is open already."""
    if session.get_bind().dialect.name != "sqlite":
        return
    dbapi = session.connection().connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        dbapi.execute("BEGIN")  # (SQLAlchemy keeps no state of its own about it)


def lock_migrations(conn: Connection) -> None:
    """On PostgreSQL, make services migrating one database take turns (the lock goes with
    the caller's transaction); SQLite's ``BEGIN IMMEDIATE`` does the same there."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:c, :o)"), {"c": LOCK_CLASS, "o": MIGRATION_LOCK}
        )


def nul_in_text(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL's (psycopg's) refusal of a NUL character in a text
    parameter, e.g. a name looked up: the caller's mistake (SQLite just finds nothing)."""
    return isinstance(exc, sa_exc.DataError) and "NUL (0x00)" in str(exc.orig)


def reason(exc: BaseException) -> str:
    """The driver's message in one line: what the server said (after FATAL:) if it
    answered, else the first line of the client's error (psycopg's go on with hints, and
    SQLAlchemy's with the statement and a link, each on lines of their own)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    if "FATAL:" in text:
        text = text.rsplit("FATAL:", 1)[1]
    return " ".join(text.split("\n", 1)[0].split())


def away(writes: bool = True) -> Unavailable:
    """The error a caller gets while the database cannot be reached (``unavailable``); for
    a request that ``writes`` and carries a request id (the call's: workspace/callctx.py;
    CreateWorkspace, CreateCluster), it says that retrying it is safe. Other writes
    (a destroy, an agent's Register or ReportStatus) have no id to be matched by."""
    message = f"{DATABASE_AWAY} right now; try again"
    if writes and callctx.current().request_id:
        message += " (a retried request with the same request id is not done twice)"
    return Unavailable(message)


def sqlite_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked": another connection held the write
    lock for longer than the busy timeout (e.g. another service migrating the store)."""
    return (
        isinstance(exc, sa_exc.OperationalError)
        and type(exc.orig).__module__.startswith("sqlite3")
        and "database is locked" in str(exc.orig)
    )


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (or cannot take work) now."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    orig = exc.orig
    if type(orig).__module__.startswith("sqlite3"):
        return sqlite_busy(exc)
    state = getattr(orig, "sqlstate", None)
    if state is None:  # raised by the client library: no server answered
        return True
    return state.startswith(_AWAY_CLASSES) or state in _AWAY_CODES
