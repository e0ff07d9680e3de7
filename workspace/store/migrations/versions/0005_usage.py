"""usage: intervals of constant consumption per workspace (docs/design/usage.md)

A workspace holding capacity at the upgrade gets an open interval from the upgrade on.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:05:17.155354
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "usage_intervals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_name", sa.String(length=63), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usage_intervals", schema=None) as batch_op:
        batch_op.create_index("ix_usage_owner", ["owner"], unique=False)
        batch_op.create_index("ix_usage_project", ["project"], unique=False)
        batch_op.create_index("ix_usage_started", ["started_at"], unique=False)
        batch_op.create_index("ix_usage_workspace_end", ["workspace_id", "ended_at"], unique=False)
    _backfill()


def _disk_bytes(spec: Any) -> int:
    """Partition.disk_bytes summed over a workspace's image_spec (as stored today)."""
    total = 0
    for p in (spec or {}).get("partitions") or ():
        virtual = int(p.get("virtual_size_bytes") or 0)
        raw = (p.get("format") or "raw") == "raw"
        total += virtual or (int(p.get("size_bytes") or 0) if raw else 0)
    return total


def _backfill() -> None:
    """Open an interval, from now, for each workspace holding capacity at the upgrade
    (the rule of workspace/domain/usage.py, written out: migrations do not import it).
    Offline (``upgrade --sql``) there are no rows to read: nothing to write."""
    if op.get_context().as_sql:
        return
    ws = sa.table(
        "workspaces",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("owner", sa.String),
        sa.column("project", sa.String),
        sa.column("cpus", sa.Integer),
        sa.column("memory_mib", sa.Integer),
        sa.column("node", sa.String),
        sa.column("state", sa.String),
        sa.column("image_spec", sa.JSON),
    )
    iv = sa.table(
        "usage_intervals",
        sa.column("workspace_id", sa.String),
        sa.column("workspace_name", sa.String),
        sa.column("owner", sa.String),
        sa.column("project", sa.String),
        sa.column("cpus", sa.Integer),
        sa.column("memory_mib", sa.BigInteger),
        sa.column("disk_bytes", sa.BigInteger),
        sa.column("started_at", sa.Float),
        sa.column("ended_at", sa.Float),
    )
    bind = op.get_bind()
    live = bind.execute(
        sa.select(ws).where(ws.c.node != "", ws.c.state.notin_(["PENDING", "TERMINATED"]))
    ).all()
    now = time.time()
    rows = [
        {
            "workspace_id": w.id,
            "workspace_name": w.name,
            "owner": w.owner,
            "project": w.project or "",
            "cpus": w.cpus if w.state == "RUNNING" else 0,
            "memory_mib": w.memory_mib,
            "disk_bytes": _disk_bytes(w.image_spec),
            "started_at": now,
            "ended_at": 0.0,
        }
        for w in live
    ]
    if rows:
        bind.execute(iv.insert(), rows)


def downgrade() -> None:
    with op.batch_alter_table("usage_intervals", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_workspace_end")
        batch_op.drop_index("ix_usage_started")
        batch_op.drop_index("ix_usage_project")
        batch_op.drop_index("ix_usage_owner")

    op.drop_table("usage_intervals")
