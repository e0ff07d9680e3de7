"""The queries a large site runs often are answered through an index, on SQLite and on
PostgreSQL: what an admin checks with EXPLAIN before 20,000 workspaces and a month of
site events make a full scan of a table cost milliseconds inside the site's write lock
(the quota check of every create, the lease pass) or on every `ws events NAME`.

PostgreSQL plans a small table with a scan whatever indexes it has, so its plans are read
with sequential scans switched off: a query no index serves still scans, or walks a whole
index in order without a condition on it (a page after the first did: its OR was no
index condition, ops/pages.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Select, or_, select, text
from sqlalchemy.engine import Connection

from tests.conftest import db_name
from tests.pg import PgServer
from workspace.domain.states import Desired, State
from workspace.ops import pages
from workspace.store import Store, Workspace
from workspace.store.site_events import EventRow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        made = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield made
        made.close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    head: str = request.getfixturevalue("pg_head")
    name = db_name(request.node.name)
    made = Store(server.database(name, template=head))
    yield made
    made.close()
    server.drop(name)


def plan(conn: Connection, q: Select[Any], in_order: bool = False) -> str:
    """The query plan; ``in_order``: PostgreSQL's plan of reading the rows in the query's
    order from an index, as it plans a page of a large table (no sort of all the rows
    after the page's start)."""
    sql = str(q.compile(conn, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
        return "\n".join(str(r[-1]) for r in rows)
    conn.execute(text("SET LOCAL enable_seqscan = off"))
    if in_order:
        conn.execute(text("SET LOCAL enable_bitmapscan = off"))
        conn.execute(text("SET LOCAL enable_sort = off"))
    return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)).all())


LIVE = Workspace.state != State.TERMINATED.value
# name: (the query, the indexes its plan uses, whether it is read in order from one)
QUERIES: dict[str, tuple[Select[Any], tuple[str, ...], bool]] = {
    # ops/projects.py workspace_use: every create of a project with quotas
    "a project's workspaces": (
        select(Workspace).where(Workspace.project == "physics", LIVE),
        ("ix_ws_project",),
        False,
    ),
    # ops/cluster_state.py, ops/unit.py _peers_moved, rosters, seeds
    "a cluster's members": (
        select(Workspace).where(Workspace.cluster == "c1"),
        ("ix_ws_cluster",),
        False,
    ),
    # ops/leases.py: the lease pass, a write every lease_check_interval_s
    "the leases ending": (
        select(Workspace)
        .where(
            Workspace.lease_expires_at > 0,
            Workspace.lease_expires_at <= 1e9,
            LIVE,
            Workspace.desired_state != Desired.TERMINATED.value,
        )
        .order_by(Workspace.lease_expires_at, Workspace.id),
        ("ix_ws_lease",),
        False,
    ),
    # ops/site_events.py: `ws events NAME` (the id or the name)
    "a workspace's events": (
        select(EventRow)
        .where(
            EventRow.id > 0,
            or_(EventRow.workspace_id == "alpha", EventRow.workspace_name == "alpha"),
        )
        .order_by(EventRow.id)
        .limit(500),
        ("ix_event_workspace", "ix_event_workspace_name"),
        False,
    ),
    # ops/queries.py list_page: a page after the first, as the next page's token names it
    "the next page of workspaces": (
        pages.by_creation(
            select(Workspace.id).where(LIVE).order_by(Workspace.created_at, Workspace.id),
            Workspace,
            "workspaces",
            100,
            pages.encode("workspaces", repr(1.7e9), "w1"),
        ),
        ("ix_ws_created",),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_a_frequent_query_is_served_by_its_index(store: Store, name: str) -> None:
    q, indexes, in_order = QUERIES[name]
    with store.engine.connect() as conn:
        found = plan(conn, q, in_order)
    for index in indexes:
        assert index in found, f"{name}: {index} not used:\n{found}"
    if store.engine.dialect.name == "sqlite":
        # a walk of the whole index is no better than a scan of the table
        assert "SCAN" not in found.replace("USE TEMP B-TREE", ""), found
    else:
        # nor is an index walked without a condition on it (only filtered)
        assert "Seq Scan" not in found and "Index Cond" in found, found
