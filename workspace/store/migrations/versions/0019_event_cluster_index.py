"""an index on the site events' cluster: `ws cluster events` reads by it

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 15:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision: str | None = "0018"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("site_events", schema=None) as batch_op:
        batch_op.create_index("ix_event_cluster", ["cluster"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("site_events", schema=None) as batch_op:
        batch_op.drop_index("ix_event_cluster")
