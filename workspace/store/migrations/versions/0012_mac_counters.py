"""MAC addresses are drawn from a counter per MAC prefix (store/macs.py) instead of at
random and checked: a mac_counters table (prefix → next suffix). No row is added here:
a prefix's counter starts above the highest MAC of that prefix already handed out.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "mac_counters",
        sa.Column("prefix", sa.String(length=8), nullable=False),
        sa.Column("next", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("prefix"),
    )


def downgrade() -> None:
    op.drop_table("mac_counters")
