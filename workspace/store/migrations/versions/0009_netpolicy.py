"""network policy and limits: workspaces keep connectivity, allow rules and limits;
projects default limits; networks a VLAN id; nodes their declared bandwidth capacity

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("connectivity", sa.String(length=16), server_default="open", nullable=False)
        )
        batch_op.add_column(sa.Column("allow", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("limits", sa.JSON(), server_default="{}", nullable=False))
        batch_op.add_column(
            sa.Column("claimed_disk_mbps", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("claimed_net_mbps", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("default_limits", sa.JSON(), server_default="{}", nullable=False)
        )
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vlan", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("disk_mbps", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("net_mbps", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("used_disk_mbps", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("used_net_mbps", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("used_net_mbps")
        batch_op.drop_column("used_disk_mbps")
        batch_op.drop_column("net_mbps")
        batch_op.drop_column("disk_mbps")
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.drop_column("vlan")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("default_limits")
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("claimed_net_mbps")
        batch_op.drop_column("claimed_disk_mbps")
        batch_op.drop_column("limits")
        batch_op.drop_column("allow")
        batch_op.drop_column("connectivity")
