"""a generation for the addresses: "addresses" takes a new random value whenever an
address is allocated or released (store/orders_gen.py), so a service process can keep
each network's address counts between transactions and check them with one read

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None

_GENERATIONS = sa.table(
    "generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger)
)


def upgrade() -> None:
    op.bulk_insert(_GENERATIONS, [{"name": "addresses", "value": secrets.randbits(62) + 1}])


def downgrade() -> None:
    op.execute(_GENERATIONS.delete().where(_GENERATIONS.c.name == "addresses"))
