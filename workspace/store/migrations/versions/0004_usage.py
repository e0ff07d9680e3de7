"""usage: intervals of constant consumption per workspace (docs/design/usage.md)

Workspaces live at the upgrade are recorded from their next state change.

Revision ID: 0004_usage
Revises: 0003
Create Date: 2026-11-29 23:05:17.155354
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_usage"
down_revision: str | None = "0003"
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


def downgrade() -> None:
    with op.batch_alter_table("usage_intervals", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_workspace_end")
        batch_op.drop_index("ix_usage_started")
        batch_op.drop_index("ix_usage_project")
        batch_op.drop_index("ix_usage_owner")

    op.drop_table("usage_intervals")
