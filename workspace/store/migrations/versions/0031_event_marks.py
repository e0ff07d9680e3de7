"""event_marks: the highest site event id the retention deleted ("deleted_upto"), the
bound below which a resume (``after_id``) is refused. It was taken as the oldest kept id
less one, but ids have gaps on PostgreSQL (a sequence skips the ids of a transaction
that rolled back after writing its events), and a resume right after such a gap was
refused though nothing after it had been deleted. A site's mark starts as that bound
was (the oldest kept id less one; 0 without events): what was deleted before is not
known any better.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-05 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision: str | None = "0030"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "event_marks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        "INSERT INTO event_marks (name, value) "
        "SELECT 'deleted_upto', COALESCE(MIN(id), 1) - 1 FROM site_events"
    )


def downgrade() -> None:
    op.drop_table("event_marks")
