"""workspace/store/engines.py without a server: URLs, options, error classes; bounds.py."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from workspace.store import bounds, engines


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("postgresql://u:p@db.example/ws", "postgresql+psycopg://u:p@db.example/ws"),
        (
            "postgres://u@/ws?host=/run/postgresql",
            "postgresql+psycopg://u@/ws?host=/run/postgresql",
        ),
        ("postgresql+psycopg://u@h/ws", "postgresql+psycopg://u@h/ws"),
        ("sqlite:////var/lib/x.db", "sqlite:////var/lib/x.db"),
    ],
)
def test_postgresql_urls_name_psycopg_3(url: str, want: str) -> None:
    assert engines.normalize_url(url) == want


def test_engine_options() -> None:
    pg = engines.engine_options("postgresql+psycopg://u@h/ws")
    assert pg["pool_pre_ping"] is True
    assert pg["pool_size"] + pg["max_overflow"] == 32
    assert pg["connect_args"]["connect_timeout"] > 0
    assert engines.engine_options("sqlite:///x.db")["connect_args"]["check_same_thread"] is False


class FakePgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"state {sqlstate}")
        self.sqlstate = sqlstate


def dbapi(cls: type[sa_exc.DBAPIError], orig: Exception, invalidated: bool = False) -> Exception:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("exc", "away"),
    [
        (dbapi(sa_exc.OperationalError, FakePgError(None)), True),  # connection refused
        (dbapi(sa_exc.OperationalError, FakePgError("08006")), True),  # connection failure
        (dbapi(sa_exc.OperationalError, FakePgError("57P01")), True),  # admin shutdown
        (dbapi(sa_exc.OperationalError, FakePgError("57P03")), True),  # starting up
        (dbapi(sa_exc.OperationalError, FakePgError("53300")), True),  # too many connections
        (dbapi(sa_exc.OperationalError, FakePgError("42P01")), False),  # undefined table: a bug
        (dbapi(sa_exc.IntegrityError, FakePgError("23505"), invalidated=True), True),
        (dbapi(sa_exc.IntegrityError, FakePgError("23505")), False),
        (dbapi(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")), True),
        (dbapi(sa_exc.OperationalError, sqlite3.OperationalError("no such table: x")), False),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
        (ValueError("x"), False),
    ],
)
def test_what_counts_as_the_database_being_away(exc: Exception, away: bool) -> None:
    assert engines.unavailable(exc) is away


def test_messages_are_cut_and_cleaned() -> None:
    assert bounds.fit("ok", 10) == "ok"
    assert bounds.fit("a\x00b", 10) == "a\ufffdb"
    cut = bounds.fit("x" * 50, 10)
    assert len(cut) == 10 and cut.endswith("…")
