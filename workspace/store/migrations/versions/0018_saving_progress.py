"""a save's progress: the disk its node is sending, the bytes received, its size

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision: str | None = "0017"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("saving_disk", sa.String(length=32), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("saving_sent", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("saving_size", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("saving_size")
        batch_op.drop_column("saving_sent")
        batch_op.drop_column("saving_disk")
