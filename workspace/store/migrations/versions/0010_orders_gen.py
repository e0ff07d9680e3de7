"""nodes keep an orders generation: a new random value whenever what the node is sent
may have changed (store/orders_gen.py), so a cached bound of its orders can be validated
with one read; a generations table: "nodes" changes whenever a node as the scheduler
sees it does

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("orders_gen", sa.BigInteger(), server_default="0", nullable=False)
        )
    gens = op.create_table(
        "generations",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(gens, [{"name": "nodes", "value": secrets.randbits(62) + 1}])


def downgrade() -> None:
    op.drop_table("generations")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("orders_gen")
