"""site events: the journal of what happened at the site (docs/design/observability.md)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "site_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("who", sa.String(length=255), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_name", sa.String(length=63), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("cluster", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("previous", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("site_events", schema=None) as batch_op:
        batch_op.create_index("ix_event_at", ["at"], unique=False)
        batch_op.create_index("ix_event_workspace", ["workspace_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("site_events", schema=None) as batch_op:
        batch_op.drop_index("ix_event_workspace")
        batch_op.drop_index("ix_event_at")
    op.drop_table("site_events")
