"""Statements of the hot paths compiled once per dialect and run as SQL text.

``Connection.execute`` of a Core statement built once still walks the statement at each
call, to make the key of SQLAlchemy's compiled cache, and builds a result around the
cursor. On a create that was about a fifth of the service's CPU, more than SQLite took
to run the statements (docs/design/control-plane.md, round seven). Here a statement is
compiled once for each dialect it meets; each call only orders its parameters and runs
each through its type's bind processor (JSON, booleans, floats: what
``Connection.execute`` would send). The text then runs in the connection's own
transaction:

* on SQLite, on the sqlite3 connection itself (SQLAlchemy's execution layer costs four
  times what SQLite takes for such a statement), its errors raised as SQLAlchemy's
  (``IntegrityError``, ``OperationalError``), as ``Connection.execute`` raises them;
* on PostgreSQL, on the psycopg connection itself the same way (a one-row SELECT cost
  158 µs of CPU through ``Connection.exec_driver_sql``, 65 µs on a psycopg cursor); a
  lost server is handled as SQLAlchemy handles it: the connection is invalidated (the
  pool drops it; the others are pinged at their next checkout) and the error says so
  (``connection_invalidated``).

A statement is prepared only when that changes nothing but the cost: no parameter
expanded at execution (``IN`` lists), and no result column whose type converts what
the driver returns. Anything else runs through ``Connection.execute``; a caller never
has to know which one it got. Rows come back as plain tuples.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None
# A row read here: a plain tuple (a statement's column types are not kept).
Row = tuple[Any, ...]
_REQUIRED = object()  # a parameter the caller must give


@dataclass(frozen=True)
class _Bind:
    key: str  # what the caller's parameters call it
    default: Any  # its value when the caller does not give it (_REQUIRED: none)
    process: _Processor  # its type's bind processor for the dialect


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    names: tuple[str, ...]  # the driver's parameter names (named paramstyles)
    binds: tuple[_Bind, ...]

    def __post_init__(self) -> None:
        # The binds as plain tuples: this runs for every statement of every create.
        plan = tuple((b.key, b.default, b.process) for b in self.binds)
        object.__setattr__(self, "_plan", plan)

    def parameters(self, given: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values: list[Any] = []
        append = values.append
        get = given.get
        for key, default, process in self._plan:  # type: ignore[attr-defined]
            value = get(key, default)
            if value is _REQUIRED:
                raise KeyError(f"parameter {key!r} is required")
            append(value if process is None else process(value))
        if self.positional:
            return tuple(values)
        return dict(zip(self.names, values, strict=True))


def _compile(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled | None:
    """``statement`` compiled for ``dialect`` (an INSERT without values: of the columns
    ``keys``), or None if running its text would differ from ``Connection.execute``."""
    assert isinstance(statement, ClauseElement)
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=list(keys) or None))
    if "POSTCOMPILE" in compiled.string:  # expanding or literal-execute parameters
        return None
    for column in getattr(statement, "exported_columns", ()):
        try:
            converts = column.type.dialect_impl(dialect).result_processor(dialect, None)
        except Exception:  # it depends on the column's type as the server sends it
            return None
        if converts is not None:
            return None
    by_name = {name: bind for bind, name in compiled.bind_names.items()}
    positional = bool(compiled.positional)
    if positional:
        names = tuple(getattr(compiled, "positiontup", None) or ())
    else:
        names = tuple(dict.fromkeys(compiled.bind_names.values()))
    binds = []
    for name in names:
        bind = by_name[name]
        if bind.callable is not None or bind.expanding:
            return None
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        binds.append(_Bind(bind.key, _REQUIRED if bind.required else bind.value, process))
    if keys and any(b.key not in keys for b in binds):
        # Columns left out take their defaults, which only Connection.execute computes.
        return None
    return _Compiled(compiled.string, positional, names, tuple(binds))


class Prepared:
    """A statement built once (at import), compiled once per dialect it runs on.

    ``rows``, ``first`` and ``scalar`` read (rows as plain tuples); ``write`` runs an
    INSERT, UPDATE or DELETE (one set of parameters or several) and returns how many
    rows it changed."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._is_insert = bool(getattr(statement, "is_insert", False))
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled | None] = {}
        self._lock = threading.Lock()

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Row]:
        return self._run(conn, params or {}, True)[0]

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Row | None:
        found = self.rows(conn, params)
        return found[0] if found else None

    def scalar(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        found = self.rows(conn, params)
        return found[0][0] if found else None

    def write(
        self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> int:
        return self._run(conn, params, False)[1]

    def _for(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled | None:
        key = (dialect.name, keys)
        try:
            return self._compiled[key]
        except KeyError:
            with self._lock:
                found = self._compiled[key] = _compile(self.statement, dialect, keys)
            return found

    def _run(
        self,
        conn: Connection,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        fetch: bool,
    ) -> tuple[list[Row], int]:
        many = not isinstance(params, Mapping)
        sets: Sequence[Mapping[str, Any]] = params if many else [params]  # type: ignore[list-item,assignment]
        if not sets:
            return [], 0
        keys = tuple(sets[0]) if self._is_insert else ()
        dialect = conn.dialect
        compiled = self._for(dialect, keys)
        if compiled is None:
            result = conn.execute(self.statement, list(sets) if many else sets[0])
        else:
            values = [compiled.parameters(p) for p in sets]
            if dialect.name == "sqlite":
                return _sqlite(conn, compiled.sql, values, many, fetch)
            if dialect.driver == "psycopg":
                return _psycopg(conn, compiled.sql, values, many, fetch)
            result = conn.exec_driver_sql(compiled.sql, values if many else values[0])
        return ([tuple(r) for r in result] if fetch else []), result.rowcount


def _sqlite(
    conn: Connection, sql: str, values: list[Any], many: bool, fetch: bool
) -> tuple[list[Row], int]:
    """Run on the connection's sqlite3 connection itself: SQLAlchemy's execution layer
    costs four times what SQLite takes for such a statement. Its errors are SQLAlchemy's
    as ``Connection.execute`` raises them (``IntegrityError``, ``OperationalError``)."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    try:
        cursor = dbapi.executemany(sql, values) if many else dbapi.execute(sql, values[0])
        try:
            return (cursor.fetchall() if fetch else []), cursor.rowcount
        finally:
            cursor.close()
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            sql, values if many else values[0], exc, sqlite3.Error, dialect=conn.dialect
        ) from exc


# Parameter sets psycopg runs one by one rather than with ``executemany`` (a pipeline):
# on a local server 2 INSERTs cost 137 µs of CPU one by one, 166 µs as a pipeline; 4
# cost 269 µs against 223 µs.
_MANY_AT = 2


def _psycopg(
    conn: Connection, sql: str, values: list[Any], many: bool, fetch: bool
) -> tuple[list[Row], int]:
    """Run on a cursor of the connection's psycopg connection, in its transaction. Errors
    are SQLAlchemy's as ``Connection.execute`` raises them; one that says the server is
    gone invalidates the connection first, as SQLAlchemy does."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    error: type[Exception] = conn.dialect.loaded_dbapi.Error
    cursor = dbapi.cursor()
    try:
        if many and len(values) > _MANY_AT:
            cursor.executemany(sql, values)
            return [], cursor.rowcount
        changed = 0
        for one in values:  # a pipeline's set-up costs more than it saves on a few
            cursor.execute(sql, one)
            changed += cursor.rowcount
        rows = cursor.fetchall() if fetch and cursor.description is not None else []
        return cast(list[Row], rows), changed
    except error as exc:
        gone = conn.dialect.is_disconnect(cast(Any, exc), dbapi, cursor)
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            values if many else values[0],
            exc,
            error,
            connection_invalidated=gone,
            dialect=conn.dialect,
        ) from exc
    finally:
        cursor.close()
