"""A store made by an older version gains the columns added since, and keeps its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import select

from workspace.store import Node, Store, Workspace


def test_missing_columns_are_added_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(f"sqlite:///{path}")
    with store.write() as s:
        s.add(Node(name="n1", hypervisor="kvm", cpus=4, memory_mib=4096))
    store.close()
    # what an older version's schema looked like: without these columns
    con = sqlite3.connect(path)
    for table, col in (
        ("nodes", "drained"),
        ("nodes", "labels"),
        ("workspaces", "networks"),
        ("workspaces", "wait_deadline"),
    ):
        con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    con.commit()
    con.close()

    store = Store(f"sqlite:///{path}")
    with store.read() as s:
        node = s.execute(select(Node)).scalar_one()
        assert (node.name, node.drained, node.labels) == ("n1", False, {})
        assert s.execute(select(Workspace)).first() is None
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(workspaces)")}
    assert {"networks", "wait_deadline"} <= cols
    store.close()


def test_a_current_store_is_left_alone(tmp_path: Path) -> None:
    from workspace.store.db import add_missing_columns

    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    assert add_missing_columns(store.engine) == []
    store.close()
