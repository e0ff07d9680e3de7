"""replicas (a registry of the service replicas on PostgreSQL, each alive while its
session holds its advisory lock; its metrics URL, and the database session of its leader
lock while it holds one: `ws-admin replica list`) and workspaces.saving_by (the replica
running a save): a save whose replica is gone is cleared at once, not after
limits.save_timeout_s.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-05 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision: str | None = "0026"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("replica_id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("listen", sa.String(length=255), nullable=False),
        sa.Column("node_listen", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("metrics_listen", sa.String(length=255), server_default="", nullable=False),
        sa.Column("leader_session", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("replica_id"),
    )
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("saving_by", sa.String(length=32), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("saving_by")
    op.drop_table("replicas")
