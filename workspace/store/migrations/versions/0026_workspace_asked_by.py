"""workspaces.asked_by: who asked for a create (a workspace's, or a cluster's) that waits
for capacity ({}: placed at once, or queued before this revision); the queue places it
only while they still may make it (certificate not revoked, still a member of its
project).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-05 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision: str | None = "0025"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("asked_by", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("asked_by")
