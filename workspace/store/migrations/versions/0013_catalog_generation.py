"""a generation for the catalog a create reads: "catalog" takes a new random value
whenever a network or an image is added, changed or removed (store/orders_gen.py), so a
service process can keep those rows between transactions and check them with one read

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 21:00:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None

_GENERATIONS = sa.table(
    "generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger)
)


def upgrade() -> None:
    op.bulk_insert(_GENERATIONS, [{"name": "catalog", "value": secrets.randbits(62) + 1}])


def downgrade() -> None:
    op.execute(_GENERATIONS.delete().where(_GENERATIONS.c.name == "catalog"))
