"""projects get a disk quota of the preemptible class (0 = no limit): preemptible
workspaces' disks count against it, as their vCPUs and memory count against theirs

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-04 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision: str | None = "0023"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "quota_preemptible_disk_gib", sa.BigInteger(), server_default="0", nullable=False
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("quota_preemptible_disk_gib")
