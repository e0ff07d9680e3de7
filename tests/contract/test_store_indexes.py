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
from sqlalchemy import Select, Update, event, or_, select, text, update
from sqlalchemy.engine import Connection

from tests.conftest import db_name
from tests.pg import PgServer
from workspace.config import ServiceConfig, load
from workspace.domain.states import Desired, State
from workspace.ops import pages, site_events
from workspace.ops.events import Notifier
from workspace.ops.unit import Env
from workspace.store import BlobHolder, Store, Workspace
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


def plan(conn: Connection, q: Select[Any] | Update, in_order: bool = False) -> str:
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
    # ops/blob_access.py held: a sender's claims in the grace (HasBlobs, import, quota)
    "a sender's claims": (
        select(BlobHolder.digest).where(
            BlobHolder.holder == "user:alice", BlobHolder.created_at >= 1.7e9
        ),
        ("ix_blob_holder_holder",),
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


def test_every_uploads_renewal_of_its_senders_claims_is_served_by_its_index(
    store: Store,
) -> None:
    """ops/blob_access.py renew: each upload (and every quarter of blob_grace_s of one)
    renews its sender's claims under the write lock; by the primary key (digest, holder)
    alone it scanned every claim on the site."""
    q = (
        update(BlobHolder)
        .where(BlobHolder.holder == "user:alice", BlobHolder.created_at >= 1.7e9)
        .values(created_at=1.8e9)
    )
    with store.engine.begin() as conn:
        found = plan(conn, q)
    assert "ix_blob_holder_holder" in found, found
    assert "SCAN" not in found and "Seq Scan" not in found, found


OLD, NEW = 100_000, 10_000


def test_the_events_since_a_time_are_read_without_walking_the_older_ones(
    pg_server: PgServer, pg_head: str, tmp_path: Path
) -> None:
    """`ws events --since 1h` on a month of kept events: the statements that read them
    examine about the events since then, not every older one first (PostgreSQL planned
    the id order with ``at`` as a filter: 390,000 rows read for 500 in a site-scale
    EXPLAIN ANALYZE)."""
    name = db_name("events_since")
    store = Store(pg_server.database(name, template=pg_head))
    try:
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO site_events (at, kind, who, workspace_id, workspace_name, "
                    "node, cluster, subject, state, previous, reason) SELECT 1e9 + g, "
                    "'workspace.state', 'alice', '', 'w' || g, '', '', '', 'RUNNING', '', '' "
                    f"FROM generate_series(1, {OLD + NEW}) g"
                )
            )
            conn.execute(text("ANALYZE site_events"))
        env = Env.of(load(ServiceConfig, None, data_dir=str(tmp_path)), store, Notifier())
        statements: list[tuple[str, Any]] = []

        def seen(_c: Any, _cur: Any, statement: str, params: Any, *_a: Any) -> None:
            if "site_events" in statement and statement.lstrip().startswith("SELECT"):
                statements.append((statement, params))

        event.listen(store.engine, "before_cursor_execute", seen)
        try:
            got = list(site_events.watch(env, 1e9 + OLD + 1, follow=False))
        finally:
            event.remove(store.engine, "before_cursor_execute", seen)
        assert [e.workspace_name for e in got] == [f"w{g}" for g in range(OLD + 1, OLD + NEW + 1)]
        examined = 0
        with store.engine.connect() as conn:
            for statement, params in statements:
                explained = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params
                ).scalar()
                examined += _examined(explained[0]["Plan"])
        assert examined < 3 * NEW, f"{examined} rows examined for {NEW} events"
    finally:
        store.close()
        pg_server.drop(name)


def _examined(node: dict[str, Any]) -> int:
    """Rows a plan's scans produced or filtered out (its leaves and their filters)."""
    own = int(node.get("Rows Removed by Filter", 0)) * int(node.get("Actual Loops", 1))
    if "Scan" in node["Node Type"]:
        own += int(node["Actual Rows"]) * int(node.get("Actual Loops", 1))
    return own + sum(_examined(child) for child in node.get("Plans", ()))
