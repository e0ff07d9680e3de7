"""who sent a blob's bytes: blob_holders (digest, holder). A caller may make an image of
a blob only if they sent it or may use an image made of it (ops/blob_access.py). No row
is added here: a blob uploaded before and not yet in an image is sent again by its push.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision: str | None = "0020"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "blob_holders",
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("holder", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest", "holder"),
    )


def downgrade() -> None:
    op.drop_table("blob_holders")
