"""A full or read-only data directory is the service's state, not an incident: the
caller is told so (RESOURCE_EXHAUSTED: full, UNAVAILABLE: read-only) rather than
"internal error … (incident …)", and the log says it with the path, once a period
(workspace/edge/calls.py). Found in the exception or what it was raised from: an
OSError (a blob written to the data directory), SQLite's "database or disk is full"
and "attempt to write a readonly database" (through SQLAlchemy's OperationalError,
which keeps the driver's error as ``orig``), PostgreSQL's disk_full (SQLSTATE 53100).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator

from workspace.errors import ResourceExhausted, Unavailable, WorkspaceError

FULL = "the service's data directory is full"
READ_ONLY = "the service's data directory is read-only"
DB_FULL = "the service's database is full"

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PG_DISK_FULL = "53100"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error a SQLAlchemy error wraps (``orig``), and what they were
    raised from, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, e.__cause__, e.__context__]


def storage_error(exc: BaseException) -> tuple[WorkspaceError, str] | None:
    """The caller's error for a full or read-only data directory, and what to log (the
    path, or the database's message); None for anything else."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS | {errno.EROFS}:
            why = e.strerror or os.strerror(e.errno or 0)
            where = f"{e.filename}: {why}" if e.filename else why
            if e.errno == errno.EROFS:
                return Unavailable(f"{READ_ONLY} ({why})"), where
            return ResourceExhausted(f"{FULL} ({why})"), where
        if isinstance(e, sqlite3.Error):
            code = getattr(e, "sqlite_errorcode", None)
            code = code & 0xFF if isinstance(code, int) else None  # the primary code
            text = str(e)
            if code == sqlite3.SQLITE_FULL or "database or disk is full" in text:
                return ResourceExhausted(f"{FULL} (database or disk is full)"), f"SQLite: {text}"
            if code == sqlite3.SQLITE_READONLY or "readonly database" in text:
                return Unavailable(f"{READ_ONLY} (the database is read-only)"), f"SQLite: {text}"
        if _PG_DISK_FULL in (getattr(e, "sqlstate", None), getattr(e, "pgcode", None)):
            return ResourceExhausted(f"{DB_FULL} (disk full)"), f"PostgreSQL: {e}"
    return None
