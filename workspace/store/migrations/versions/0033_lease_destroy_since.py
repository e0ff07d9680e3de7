"""projects.lease_destroy_since: when a project's expiry action last became DESTROY
(`ws-admin project set P --on-expiry destroy`). A lease that ended before then ended
under STOP: its workspace, stopped at that end, is not destroyed with its disks by the
next lease pass (ops/leases.py). Projects made before keep 0: the expiry action they
have applies to every lease, as it did.

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-06 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision: str | None = "0032"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease_destroy_since", sa.Float(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("lease_destroy_since")
