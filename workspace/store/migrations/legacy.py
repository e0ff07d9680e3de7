"""Adoption of a store created before migrations existed.

Such a store has its tables (made by ``create_all``) but no ``alembic_version``; one that
an older release made may lack tables, columns and indexes added since (its releases added
columns at start-up). Adoption brings it to the schema of revision ``0001``: missing tables
are created; missing columns are added, existing rows getting the model's default as the
old start-up upgrade gave them (the column keeps that DEFAULT), except
``ip_allocations.ip_int``, computed from ``ip``; missing indexes and unique constraints are
created. The caller then stamps it ``0001`` and upgrades as usual. Column types are left
as they are (the first release's INTEGER ``blobs.size_bytes``, BIGINT since, is the same
type in SQLite).

The schema of ``0001`` is read from the revision itself (its ``upgrade()`` run in offline
mode with ``create_table`` recorded), so it is written down once.
"""

from __future__ import annotations

import io
import ipaddress
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Dialect

from workspace.store.migrations import defaults

BASELINE = "0001"

# The tables of revision 0001: any of them without alembic_version marks an old store.
BASELINE_TABLES = frozenset(
    {
        "nodes",
        "networks",
        "blobs",
        "images",
        "workspaces",
        "clusters",
        "trust_settings",
        "trust_keys",
        "revoked_digests",
        "image_signatures",
        "trust_audit",
        "ip_allocations",
        "console_logs",
    }
)


def _backfill_ip_int(conn: Connection) -> None:
    """Allocations made before ``ip_int`` existed: their address as an integer (the
    lowest-free-address query reads it; 0 would offer taken addresses again)."""
    rows = conn.execute(sa.text("SELECT id, ip FROM ip_allocations")).fetchall()
    for row_id, ip in rows:
        conn.execute(
            sa.text("UPDATE ip_allocations SET ip_int = :v WHERE id = :id"),
            {"v": int(ipaddress.ip_address(ip)), "id": row_id},
        )


# Columns whose value for existing rows is computed from other columns, not a default.
BACKFILLS = {("ip_allocations", "ip_int"): _backfill_ip_int}


def baseline_tables(script: ScriptDirectory, dialect: Dialect) -> list[sa.Table]:
    """The tables revision 0001 creates, with their columns, constraints and indexes."""
    revision = script.get_revision(BASELINE)
    assert revision is not None and revision.module is not None
    ctx = MigrationContext.configure(
        dialect=dialect, opts={"as_sql": True, "output_buffer": io.StringIO()}
    )
    tables: list[sa.Table] = []

    def record(table: sa.Table, **_kw: Any) -> None:
        tables.append(table)

    # Offline mode writes DDL to the buffer; record the tables instead.
    setattr(ctx.impl, "create_table", record)  # noqa: B010
    with Operations.context(ctx):
        revision.module.upgrade()
    return tables


def _fill_value(col: sa.Column[Any], dialect: Dialect) -> str | sa.TextClause:
    """A DEFAULT that gives existing rows the column's Python default."""
    value = defaults.server_default(col)
    if value is not None:
        return value
    data = defaults.python_default(col) or b""
    if dialect.name == "postgresql":
        return sa.text(f"'\\x{data.hex()}'::bytea")
    return sa.text(f"X'{data.hex()}'")


def adopt(conn: Connection, script: ScriptDirectory) -> list[str]:
    """Bring an old store to revision 0001's schema; returns what was added."""
    insp = sa.inspect(conn)
    have_tables = set(insp.get_table_names())
    # inside the caller's transaction (on SQLite: BEGIN IMMEDIATE)
    ops = Operations(MigrationContext.configure(conn, opts={"transactional_ddl": True}))
    added: list[str] = []
    for table in baseline_tables(script, conn.dialect):
        if table.name not in have_tables:
            table.create(conn)
            added.append(table.name)
            continue
        have_cols = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have_cols:
                ops.add_column(
                    table.name,
                    sa.Column(
                        col.name,
                        col.type,
                        nullable=col.nullable,
                        server_default=_fill_value(col, conn.dialect),
                    ),
                )
                added.append(f"{table.name}.{col.name}")
                backfill = BACKFILLS.get((table.name, col.name))
                if backfill is not None:
                    backfill(conn)
        have_ix = {ix["name"] for ix in insp.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have_ix:
                index.create(conn)
                added.append(f"{table.name}.{index.name}")
        have_uq = {uq["name"] for uq in insp.get_unique_constraints(table.name)}
        for uq in table.constraints:
            if isinstance(uq, sa.UniqueConstraint) and uq.name not in have_uq:
                with ops.batch_alter_table(table.name) as batch:
                    batch.create_unique_constraint(str(uq.name), [c.name for c in uq.columns])
                added.append(f"{table.name}.{uq.name}")
    return added
