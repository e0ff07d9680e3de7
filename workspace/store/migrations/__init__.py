"""Schema migrations of the store (Alembic, configured in code: no alembic.ini).

``upgrade(engine)`` brings any store to the newest revision; ``Store`` calls it on start.
A store made before migrations existed (tables, no ``alembic_version``) is first brought to
revision ``0001`` by ``legacy.adopt`` and stamped. New revisions: see docs/design/store.md
(``python -m workspace.store.migrations revision -m "what changes" --autogenerate``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

import workspace.store.engines as engines

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic (and Mako) are imported only when a store must change: a service whose store is
# at the newest revision starts without loading them (about 11 MiB of RSS).

log = logging.getLogger("workspace.store")

DIRECTORY = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"


def config(connection: Connection | None = None, url: str = "") -> Config:
    """An Alembic configuration for this package; ``connection`` is used as is (the caller
    owns its transaction), else ``url`` is opened."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(DIRECTORY).replace("%", "%%"))
    # revisions are numbered: 0001_baseline.py, 0002_<slug>.py, ...
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "40")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


_REVISION_RE = re.compile(r'^(down_)?revision(?:\s*:[^=]*)?\s*=\s*"([^"]*)"', re.MULTILINE)


@functools.cache
def _revisions() -> tuple[set[str], set[str]]:
    """(every revision, every revision another one follows), read from the revision
    files' ``revision``/``down_revision`` lines without loading Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (DIRECTORY / "versions").glob("[0-9]*.py"):
        for down, rev in _REVISION_RE.findall(path.read_text()):
            (parents if down else revisions).add(rev)
    return revisions, parents


def head() -> str:
    """The newest revision (a test checks it agrees with Alembic's own answer)."""
    revisions, parents = _revisions()
    heads = sorted(revisions - parents)
    assert len(heads) == 1, f"the revisions have {len(heads)} heads: {heads}"
    return heads[0]


def current(connection: Connection) -> str | None:
    """The revision a database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


# How long a starting service waits for another one's migration of the same SQLite file
# (beyond SQLite's own busy timeout, which a migration on a loaded machine can outlast).
START_WAIT_S = 300.0


def upgrade(engine: Engine) -> list[str]:
    """Bring the database to the newest revision in one transaction; a no-op when it is
    there already. Returns what the adoption of a pre-migrations store changed (else []).
    While another process holds the SQLite file's write lock (its own migration), waits
    for it, up to ``START_WAIT_S``; PostgreSQL waits on its advisory lock instead."""
    check_known(engine)
    deadline = time.monotonic() + START_WAIT_S
    while True:
        try:
            return _upgrade_once(engine)
        except OperationalError as exc:
            if not engines.sqlite_busy(exc) or time.monotonic() > deadline:
                raise
            log.info("the store is locked by another process (migrating?); waiting")
            time.sleep(0.5)


def _upgrade_once(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite ALTERs copy tables (batch mode): foreign keys are checked at the end
            # instead. The pragma is ignored inside a transaction, so it comes first.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            changed = _upgrade(conn, sqlite)
            if sqlite:
                bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                conn.commit()
                if bad:
                    raise RuntimeError(f"store migration broke foreign keys: {bad[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
    return changed


def at_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        if VERSION_TABLE not in inspect(conn).get_table_names():
            return False
        return _version(conn) == head()


URL_ENV = "WS_STORE_URL"


def check_known(engine: Engine) -> None:
    """RuntimeError when the store is at a revision this release does not have: a newer
    release migrated it (a downgrade), which no migration here can undo."""
    with engine.connect() as conn:
        if VERSION_TABLE not in inspect(conn).get_table_names():
            return
        at = _version(conn)
    if at is not None and at not in _revisions()[0]:
        raise RuntimeError(
            f"the store is at migration {at}, which this release does not know (its newest"
            f" is {head()}): a newer release upgraded it; run that release, or restore a"
            " backup taken before the upgrade (docs/design/store.md)"
        )


def upgrade_in_child(engine: Engine) -> None:
    """``upgrade``, run in a short-lived child process when the database is one another
    process can open (a file or a server), so that the service never loads Alembic and
    Mako (about 11 MiB it would keep for its whole life). The URL travels in the
    environment, not on a command line others can read."""
    if at_head(engine):
        return
    check_known(engine)  # before a child is started for nothing
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        upgrade(engine)
        return
    env = {**os.environ, URL_ENV: url.render_as_string(hide_password=False)}
    done = subprocess.run(
        [sys.executable, "-m", "workspace.store.migrations", "upgrade", "--url-from-env"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stderr.splitlines():
        log.info("migration: %s", line)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"store migration failed: {last[0].removeprefix(FAILED)}")


# How the child's last line begins when the migration failed (then: ``failure``).
FAILED = "migration failed: "
# PostgreSQL's words when the role may not create tables in the database: since
# PostgreSQL 15 only the database's owner may, in schema public, unless granted.
_NO_CREATE = "permission denied for schema public"


def failure(exc: BaseException) -> str:
    """Why a migration failed, in one line: the server's or driver's words (not
    SQLAlchemy's last line, a link to its docs), and what to do when the role may not
    create the store's tables."""
    said = engines.reason(exc)
    if _NO_CREATE in said:
        said += (
            " (the store's role must be allowed to create tables there: make the database"
            " with it as the owner, `createdb -O ROLE DB`, or `GRANT CREATE ON SCHEMA public"
            " TO ROLE` in it; PostgreSQL 15 grants that to the owner only)"
        )
    return said


def _version(conn: Connection) -> str | None:
    """The revision, read without Alembic (whose context logs on every start)."""
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def _upgrade(conn: Connection, sqlite: bool) -> list[str]:
    with conn.begin():
        if sqlite:
            # pysqlite runs DDL outside transactions unless one is open: open it here, so
            # that a failed migration leaves the store as it was (and two starting services
            # take turns).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:  # PostgreSQL: the same turns, through an advisory lock
            engines.lock_migrations(conn)
        changed: list[str] = []
        tables = set(inspect(conn).get_table_names())
        before = _version(conn) if VERSION_TABLE in tables else None
        if before == head():
            return changed
        from alembic import command

        from workspace.store.migrations import legacy

        if VERSION_TABLE not in tables and tables & legacy.BASELINE_TABLES:
            changed = legacy.adopt(conn, script())
            command.stamp(config(conn), legacy.BASELINE)
            log.info(
                "store from before migrations adopted at revision %s%s",
                legacy.BASELINE,
                f"; added {', '.join(changed)}" if changed else "",
            )
            before = legacy.BASELINE
        if before != head():
            command.upgrade(config(conn), "head")
            log.info("store schema upgraded from %s to %s", before, head())
        return changed
