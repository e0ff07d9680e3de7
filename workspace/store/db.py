"""Engine and session handling.

SQLite runs in WAL mode with synchronous=FULL (a commit is durable when it returns)
and busy timeouts. All writing transactions are serialised by one lock in this
process: SQLite has a single writer anyway, and it keeps a placement, its IP
allocations and its capacity claim in one atomic step. With PostgreSQL the unique
constraints remain the last line of defence.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, create_engine, event, inspect, text
from sqlalchemy import literal as sa_literal
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from workspace.store.models import Base

log = logging.getLogger("workspace.store")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _column_default_sql(col: Column[Any], engine: Engine) -> str:
    """A literal DEFAULT for adding ``col`` to existing rows."""
    value: Any = None
    if col.default is not None:
        arg = col.default.arg  # type: ignore[attr-defined]
        value = arg(None) if callable(arg) else arg
    if value is None:
        value = col.type.python_type() if not isinstance(col.type, JSON) else None
    if isinstance(col.type, JSON):
        value = json.dumps(value if value is not None else {})
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, bytes):
        return "X''" if not value else "X'" + value.hex() + "'"
    lit = sa_literal(value).compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    return str(lit)


def add_missing_columns(engine: Engine) -> list[str]:
    """Additive schema upgrade: columns added to the models since a store was created are
    added to its tables (with their defaults), so a service restarts on an older store."""
    insp = inspect(engine)
    added: list[str] = []
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not insp.has_table(table.name):
                continue
            have = {c["name"] for c in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                type_sql = col.type.compile(dialect=engine.dialect)
                default = _column_default_sql(col, engine)
                conn.execute(
                    text(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {type_sql} '
                        f"NOT NULL DEFAULT {default}"
                        if not col.nullable
                        else f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {type_sql} '
                        f"DEFAULT {default}"
                    )
                )
                added.append(f"{table.name}.{col.name}")
    return added


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        added = add_missing_columns(self.engine)
        if added:
            log.info("store upgraded: added column(s) %s", ", ".join(added))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = threading.RLock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One serialised read-write transaction; commits on success, rolls back on error."""
        with self.write_lock, self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
