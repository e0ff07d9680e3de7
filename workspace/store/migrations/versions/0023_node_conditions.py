"""node conditions: what keeps a node from serving some workspaces, as its agent reports

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-04 14:59:41
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision: str | None = "0022"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Existing nodes have none until their agent's next full report says.
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conditions", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("conditions")
