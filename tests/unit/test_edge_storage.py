"""A full or read-only data directory, as the edge tells a caller (workspace/edge/storage.py):
found in an OSError, in SQLite's own "database or disk is full" through SQLAlchemy, and in
what an error was raised from; anything else is not."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from workspace.edge.storage import storage_error
from workspace.errors import ResourceExhausted, Unavailable


def test_no_space_and_quota_are_full_with_the_path() -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        found = storage_error(OSError(code, "No space left on device", "/srv/ws/blobs/tmp/x"))
        assert found is not None
        err, where = found
        assert isinstance(err, ResourceExhausted)
        assert err.message == "the service's data directory is full (No space left on device)"
        assert where == "/srv/ws/blobs/tmp/x: No space left on device"


def test_a_read_only_file_system_is_unavailable() -> None:
    found = storage_error(OSError(errno.EROFS, "Read-only file system"))
    assert found is not None
    err, where = found
    assert isinstance(err, Unavailable)
    assert err.message == "the service's data directory is read-only (Read-only file system)"
    assert where == "Read-only file system"


def test_sqlite_full_through_sqlalchemy(tmp_path: Path) -> None:
    """A real SQLite database that cannot grow (max_page_count), as on a full disk."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (x BLOB)")
    with pytest.raises(OperationalError) as raised, engine.begin() as c:
        c.exec_driver_sql("PRAGMA max_page_count = 3")
        c.exec_driver_sql("INSERT INTO t VALUES (?)", (b"\0" * 100_000,))
    engine.dispose()
    found = storage_error(raised.value)
    assert found is not None
    err, where = found
    assert isinstance(err, ResourceExhausted)
    assert err.message == "the service's data directory is full (database or disk is full)"
    assert where == "SQLite: database or disk is full"


def test_found_in_what_an_error_was_raised_from() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing the blob failed") from inner
    except RuntimeError as outer:
        found = storage_error(outer)
    assert found is not None and isinstance(found[0], ResourceExhausted)


def test_anything_else_is_not_a_storage_error() -> None:
    assert storage_error(OSError(errno.EACCES, "Permission denied")) is None
    assert storage_error(RuntimeError("boom")) is None
    assert storage_error(sqlite3.OperationalError("no such table: t")) is None
