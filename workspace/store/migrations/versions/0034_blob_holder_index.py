"""blob_holders: an index on (holder, created_at). Every upload renews its sender's
claims made within blob_grace_s (ops/blob_access.py ``renew``), and their HasBlobs,
imports and quota check read them: by holder, which the primary key (digest, holder)
does not serve, so each was a scan of every claim on the site under the write lock.

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-06 04:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0034"
down_revision: str | None = "0033"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("blob_holders", schema=None) as batch_op:
        batch_op.create_index("ix_blob_holder_holder", ["holder", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("blob_holders", schema=None) as batch_op:
        batch_op.drop_index("ix_blob_holder_holder")
