"""workspaces keep the reboots their node reported carried out (-1: not reported, as for
every workspace until its node's agent reports the count)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision: str | None = "0015"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("applied_reboot_count", sa.Integer(), server_default="-1", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("applied_reboot_count")
