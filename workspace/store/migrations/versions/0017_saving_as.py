"""workspaces say which image they are being saved as, and since when (ops/save.py)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision: str | None = "0016"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("saving_as", sa.String(length=255), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("saving_since", sa.Float(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("saving_since")
        batch_op.drop_column("saving_as")
