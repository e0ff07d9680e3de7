"""The store's schema migrations (Alembic): what a database of each age becomes.

The fixtures are ``sqlite3 .schema`` dumps of a store created by an older release, kept
as text so that these tests do not depend on today's models:

- ``store_schema_49a6878.sql``: the last schema before migrations (= revision 0001);
- ``store_schema_39f9af5.sql``: the first release (no drain, cache, queue or trust
  columns and tables, ``blobs.size_bytes`` INTEGER, no ``ip_int``).

When ``test_a_fresh_store_matches_the_models`` fails, the models changed: write the next
revision (docs/design/store.md, "Adding a migration").
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from workspace.store import (
    Base,
    IpAllocation,
    Network,
    Node,
    ProjectDeletion,
    Store,
    UsageInterval,
    Workspace,
    migrations,
)

FIXTURES = Path(__file__).parent / "fixtures"
TODAY = FIXTURES / "store_schema_49a6878.sql"
FIRST_RELEASE = FIXTURES / "store_schema_39f9af5.sql"

# A few rows: each goes in with the columns its table has in the database's schema.
ROWS: list[tuple[str, dict[str, Any]]] = [
    (
        "nodes",
        {
            "name": "n1",
            "hypervisor": "kvm",
            "cpus": 8,
            "memory_mib": 16384,
            "disk_gib": 100,
            "used_cpus": 2,
            "used_memory_mib": 2048,
            "state": "READY",
            "drained": 0,
            "last_heartbeat": 12.5,
            "labels": '{"rack": "a"}',
            "networks": '["net0"]',
            "cached_digests": "[]",
            "peer_address": "",
            "cache": "[]",
            "cache_budget_bytes": 0,
            "prefetch": "[]",
        },
    ),
    (
        "networks",
        {
            "name": "net0",
            "subnet": "10.1.0.0/24",
            "gateway": "10.1.0.1",
            "range_start": "10.1.0.2",
            "range_end": "10.1.0.254",
            "bridge": "br0",
            "mac_prefix": "52:54:00",
            "dns": '["10.1.0.1"]',
        },
    ),
    (
        "workspaces",
        {
            "id": "ws1",
            "name": "web",
            "owner": "alice",
            "request_id": "r1",
            "request_hash": "h1",
            "image": "img:1",
            "image_spec": '{"partitions": []}',
            "cpus": 2,
            "memory_mib": 2048,
            "claimed_cpus": 2,
            "claimed_memory_mib": 2048,
            "node": "n1",
            "state": "RUNNING",
            "desired_state": "RUNNING",
            "reason": "",
            "reboot_count": 0,
            "stop_timeout_s": 60,
            "force_stop": 0,
            "user_data": b"hi",
            "cluster": "",
            "role": "",
            "networks": '["net0"]',
            "requirements": "{}",
            "wait_deadline": 0.0,
            "created_at": 1.0,
            "updated_at": 2.0,
        },
    ),
    (
        "ip_allocations",
        {
            "id": 1,
            "network": "net0",
            "ip": "10.1.0.2",
            "ip_int": 167837698,
            "mac": "52:54:00:00:00:01",
            "workspace_id": "ws1",
            "nic_index": 0,
        },
    ),
    (
        "ip_allocations",
        {
            "id": 2,
            "network": "net0",
            "ip": "10.1.0.3",
            "ip_int": 167837699,
            "mac": "52:54:00:00:00:02",
            "workspace_id": "ws1",
            "nic_index": 1,
        },
    ),
]


def make_db(path: Path, ddl: Path, rows: bool = True) -> None:
    """A database as an older release left it: its schema (``ddl``) and a few rows."""
    con = sqlite3.connect(path)
    con.executescript(ddl.read_text())
    for table, values in ROWS if rows else []:
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        cols = [c for c in values if c in have]
        con.execute(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [values[c] for c in cols],
        )
    con.commit()
    con.close()


def schema(engine: Engine, types: bool = True) -> dict[str, Any]:
    """Tables, columns, keys, indexes and unique constraints, as the inspector sees them."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": {
                c["name"]: (str(c["type"]) if types else "", c["nullable"], c.get("default"))
                for c in insp.get_columns(table)
            },
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"])
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                for ix in insp.get_indexes(table)
            ),
            "uniques": sorted(
                (str(uq["name"]), tuple(uq["column_names"]))
                for uq in insp.get_unique_constraints(table)
            ),
        }
    return out


def fresh_schema(tmp_path: Path, types: bool = True) -> dict[str, Any]:
    store = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        return schema(store.engine, types)
    finally:
        store.close()


def revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return migrations.current(conn)


def test_todays_store_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "today.db"
    make_db(path, TODAY)
    store = Store(f"sqlite:///{path}")
    try:
        assert revision(store.engine) == migrations.head()
        with store.read() as s:
            node = s.execute(select(Node)).scalar_one()
            assert (node.name, node.cpus, node.labels, node.networks) == (
                "n1",
                8,
                {"rack": "a"},
                ["net0"],
            )
            assert node.conditions == []  # 0023: none until its agent's next full report
            net = s.execute(select(Network)).scalar_one()
            assert (net.subnet, net.dns) == ("10.1.0.0/24", ["10.1.0.1"])
            ws = s.execute(select(Workspace)).scalar_one()
            assert (ws.id, ws.node, ws.state, ws.user_data) == ("ws1", "n1", "RUNNING", b"hi")
            assert ws.image_spec == {"partitions": []}
            assert ws.applied_reboot_count == -1  # 0016: unknown until its node reports
            allocs = s.execute(select(IpAllocation).order_by(IpAllocation.id)).scalars().all()
            assert [(a.ip, a.ip_int, a.nic_index) for a in allocs] == [
                ("10.1.0.2", 167837698, 0),
                ("10.1.0.3", 167837699, 1),
            ]
        assert schema(store.engine) == fresh_schema(tmp_path)
    finally:
        store.close()


def test_first_release_store_is_upgraded_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "first.db"
    make_db(path, FIRST_RELEASE)
    store = Store(f"sqlite:///{path}")
    try:
        assert revision(store.engine) == migrations.head()
        with store.read() as s:
            node = s.execute(select(Node)).scalar_one()
            assert (node.name, node.labels, node.drained) == ("n1", {"rack": "a"}, False)
            assert (node.peer_address, node.cache, node.cache_budget_bytes) == ("", [], 0)
            assert node.prefetch == []
            ws = s.execute(select(Workspace)).scalar_one()
            assert (ws.networks, ws.requirements, ws.wait_deadline) == ([], {}, 0.0)
            allocs = s.execute(select(IpAllocation).order_by(IpAllocation.id)).scalars().all()
            # computed from the address, not defaulted: the lowest-free query reads it
            assert [a.ip_int for a in allocs] == [167837698, 167837699]
        got, fresh = schema(store.engine, types=False), fresh_schema(tmp_path, types=False)
        # the columns added to existing tables keep the DEFAULT that filled their rows
        for table in got.values():
            table["columns"] = {k: v[:2] for k, v in table["columns"].items()}
        for table in fresh.values():
            table["columns"] = {k: v[:2] for k, v in table["columns"].items()}
        assert got == fresh
    finally:
        store.close()


def test_missing_columns_are_added_with_defaults(tmp_path: Path) -> None:
    """A store of the last pre-migrations release that an older one made: some columns
    were never added to it."""
    path = tmp_path / "old.db"
    make_db(path, TODAY, rows=False)
    con = sqlite3.connect(path)
    con.execute(
        "INSERT INTO nodes (name, hypervisor, cpus, memory_mib, disk_gib, used_cpus,"
        " used_memory_mib, state, drained, last_heartbeat, labels, networks, cached_digests,"
        " peer_address, cache, cache_budget_bytes, prefetch)"
        " VALUES ('n1', 'kvm', 4, 4096, 0, 0, 0, 'READY', 0, 0.0, '{}', '[]', '[]', '', '[]',"
        " 0, '[]')"
    )
    # what an older version's schema looked like: without these columns
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


def test_a_fresh_store_matches_the_models(tmp_path: Path) -> None:
    """If this fails, models.py changed without a migration: add the next revision."""
    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
    finally:
        store.close()


@pytest.mark.parametrize("ddl", [None, TODAY, FIRST_RELEASE], ids=["new", "today", "first"])
def test_upgrading_twice_is_a_no_op(tmp_path: Path, ddl: Path | None) -> None:
    path = tmp_path / "twice.db"
    if ddl is not None:
        make_db(path, ddl)
    Store(f"sqlite:///{path}").close()
    once = schema(create_engine(f"sqlite:///{path}"))
    rows_once = dump(path)
    store = Store(f"sqlite:///{path}")
    try:
        assert migrations.upgrade(store.engine) == []
        assert schema(store.engine) == once
        assert revision(store.engine) == migrations.head()
    finally:
        store.close()
    assert dump(path) == rows_once


def dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_a_failed_migration_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "first.db"
    make_db(path, FIRST_RELEASE)
    before = schema(create_engine(f"sqlite:///{path}"))

    def boom(*_a: Any, **_kw: Any) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr("alembic.command.stamp", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        Store(f"sqlite:///{path}")
    assert schema(create_engine(f"sqlite:///{path}")) == before


def _held_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another process's migration, as SQLite sees it: a write lock held for ``seconds``."""
    held = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    return t


def test_a_starting_service_outwaits_another_ones_migration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The write lock is held past SQLite's busy timeout (here 0.1 s, 10 s in a Store): the
    upgrade keeps waiting instead of failing with "database is locked", then migrates."""
    path = tmp_path / "busy.db"
    sqlite3.connect(path).close()
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    holder = _held_write_lock(path, 1.5)
    try:
        with caplog.at_level("INFO", logger="workspace.store"):
            migrations.upgrade(engine)
        assert revision(engine) == migrations.head()
        assert "locked by another process" in caplog.text
    finally:
        holder.join()
        engine.dispose()


def test_the_wait_for_another_migration_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stuck.db"
    sqlite3.connect(path).close()
    monkeypatch.setattr(migrations, "START_WAIT_S", 0.5)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    holder = _held_write_lock(path, 2.0)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            migrations.upgrade(engine)
    finally:
        holder.join()
        engine.dispose()


def test_store_keeps_its_sqlite_settings(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
    finally:
        store.close()


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    Store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    said = (
        rf"^the store is at migration 9999, which this release does not know \(its newest"
        rf" is {migrations.head()}\): a newer release upgraded it"
    )
    with pytest.raises(RuntimeError, match=said):
        Store(f"sqlite:///{path}")
    # A service starting on it (the migration in a child process): refused the same way,
    # before a child is started.
    with pytest.raises(RuntimeError, match=said):
        Store(f"sqlite:///{path}", migrate_in_child=True)


def test_missing_tables_indexes_and_unique_constraints_are_created(tmp_path: Path) -> None:
    ddl = TODAY.read_text()
    console_logs = ddl[ddl.index("CREATE TABLE console_logs") :]
    ddl = ddl.replace(console_logs, "")  # a table with a foreign key
    for piece in (
        "CREATE INDEX ix_ws_state ON workspaces (state);",
        "CREATE INDEX ix_alloc_network_ip_int ON ip_allocations (network, ip_int);",
        "\tCONSTRAINT uq_mac UNIQUE (mac), \n",
    ):
        assert piece in ddl
        ddl = ddl.replace(piece, "")
    older = tmp_path / "older.sql"
    older.write_text(ddl)
    path = tmp_path / "older.db"
    make_db(path, older)
    store = Store(f"sqlite:///{path}")
    try:
        assert schema(store.engine) == fresh_schema(tmp_path)
        with store.read() as s:  # the rebuilt table kept its rows
            assert len(s.execute(select(IpAllocation)).scalars().all()) == 2
    finally:
        store.close()


def test_a_queued_workspace_keeps_its_wait_reason_in_its_own_field(tmp_path: Path) -> None:
    """0002: the queue's text in ``reason`` moves into ``wait_reason``; other reasons stay."""
    path = tmp_path / "queued.db"
    make_db(path, TODAY)
    con = sqlite3.connect(path)
    con.execute("UPDATE workspaces SET reason = 'waiting for capacity: no node has 64 cpus'")
    row = dict(next(v for t, v in ROWS if t == "workspaces"))
    row.update(id="ws2", name="other", request_id="r2", reason="stopped by its owner")
    con.execute(
        f"INSERT INTO workspaces ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )
    con.commit()
    con.close()
    store = Store(f"sqlite:///{path}")
    try:
        with store.read() as s:
            got = {w.id: (w.reason, w.wait_reason) for w in s.execute(select(Workspace)).scalars()}
        assert got == {
            "ws1": ("", "no node has 64 cpus"),
            "ws2": ("stopped by its owner", ""),
        }
    finally:
        store.close()


def test_head_read_from_the_files_is_alembics_head() -> None:
    assert migrations.head() == migrations.script().get_current_head()


def test_a_store_at_head_starts_without_loading_alembic(tmp_path: Path) -> None:
    """Alembic and Mako cost the service ~11 MiB of RSS: a store at head does not load
    them, and the service migrates a store that must change in a child process."""
    import subprocess
    import sys

    Store(f"sqlite:///{tmp_path / 'at-head.db'}").close()
    new = tmp_path / "new.db"
    code = (
        "import sys\n"
        "from workspace.store import Store\n"
        f"Store('sqlite:///{tmp_path / 'at-head.db'}').close()\n"
        f"Store('sqlite:///{new}', migrate_in_child=True).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # The new store was migrated (by the child) all the same.
    assert revision(create_engine(f"sqlite:///{new}")) == migrations.head()


def test_workspaces_holding_capacity_get_an_open_usage_interval(tmp_path: Path) -> None:
    """0005: a live placed workspace is metered from the upgrade on (disk from its bound
    image's partitions); a queued or terminated one is not."""
    path = tmp_path / "metered.db"
    make_db(path, TODAY)
    con = sqlite3.connect(path)
    spec = '{"partitions": [{"name": "root", "size_bytes": 4096, "format": "raw"}]}'
    con.execute("UPDATE workspaces SET image_spec = ?", (spec,))
    base = dict(next(v for t, v in ROWS if t == "workspaces"))
    for wid, node, state in (("ws2", "", "PENDING"), ("ws3", "n1", "TERMINATED")):
        row = dict(base, id=wid, name=wid, request_id=wid, node=node, state=state)
        con.execute(
            f"INSERT INTO workspaces ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    con.commit()
    con.close()
    before = time.time()
    store = Store(f"sqlite:///{path}")
    try:
        with store.read() as s:
            (iv,) = s.execute(select(UsageInterval)).scalars()
        assert (iv.workspace_id, iv.owner, iv.cpus, iv.memory_mib, iv.disk_bytes) == (
            "ws1",
            "alice",
            2,
            2048,
            4096,
        )
        assert iv.ended_at == 0 and iv.started_at >= before
    finally:
        store.close()


def test_project_deletions_still_journaled_are_kept_as_deletions(tmp_path: Path) -> None:
    """0025: a project deleted before the upgrade whose project.deleted event the
    journal still holds is known as deleted (a certificate issued before then makes no
    member of the project made again under its name); members a grow added keep {}."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'deleted.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(migrations.config(conn), "0024")
        for at, kind, subject in (
            (100.0, "project.deleted", "physics"),
            (200.0, "project.created", "physics"),
            (300.0, "project.deleted", "chem"),
        ):
            conn.exec_driver_sql(
                "INSERT INTO site_events (at, kind, who, workspace_id, workspace_name, node, "
                "cluster, subject, state, previous, reason) "
                "VALUES (?, ?, 'user:root', '', '', '', '', ?, '', '', '')",
                (at, kind, subject),
            )
    engine.dispose()
    store = Store(url)
    try:
        with store.read() as s:
            got = [(d.name, d.created_at, d.deleted_at) for d in s.scalars(select(ProjectDeletion))]
        assert sorted(got) == [("chem", 0.0, 300.0), ("physics", 0.0, 100.0)]
    finally:
        store.close()


def test_the_cached_blobs_nodes_said_before_are_believed_again_only_when_given(
    tmp_path: Path,
) -> None:
    """0030: what nodes reported cached was kept as they said it, a compromised node's
    claims with it (placement prefers a node caching the image); the upgrade forgets it,
    and each node's next report says again what the service believes (ops/cache_claims.py)."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'claims.db'}"
    store = Store(url)
    with store.write() as s:
        claimed = ["sha256:" + "a" * 64]
        s.add(Node(name="n2", hypervisor="fake", cpus=8, memory_mib=16384, cached_digests=claimed))
    store.close()
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(migrations.config(conn), "0029")
    engine.dispose()
    store = Store(url)
    try:
        with store.read() as s:
            node = s.get(Node, "n2")
            assert node is not None and node.cached_digests == []
    finally:
        store.close()


@pytest.mark.parametrize("kept", [[], [5, 6, 7]])
def test_an_upgraded_sites_deleted_mark_starts_at_the_oldest_kept_less_one(
    tmp_path: Path, kept: list[int]
) -> None:
    """0031: the highest event id the retention deleted is kept from then on; a site's
    mark starts where the refusal of a resume was (the oldest kept id less one, 0
    without events): what was deleted before the upgrade is not known any better."""
    from alembic import command

    from workspace.store.site_events import DELETED_UPTO, EventMark

    url = f"sqlite:///{tmp_path / 'marks.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(migrations.config(conn), "0030")
        for i in kept:
            conn.exec_driver_sql(
                "INSERT INTO site_events (id, at, kind, who, workspace_id, workspace_name, "
                "node, cluster, subject, state, previous, reason) "
                "VALUES (?, 1.0, 'node.state', '', '', '', '', '', '', '', '', '')",
                (i,),
            )
    engine.dispose()
    store = Store(url)
    try:
        with store.read() as s:
            mark = s.get(EventMark, DELETED_UPTO)
            assert mark is not None and mark.value == (kept[0] - 1 if kept else 0)
    finally:
        store.close()
