"""the preemptible class, backfill and elastic clusters: workspaces keep their class,
their preemption grace and who preempted them; clusters keep their class and autoscale
settings; projects get quotas of the preemptible class; usage intervals say the class;
a backfill table; an index on workspaces.updated_at (the 5-second recheck)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preemptible", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("preempt_grace_s", sa.Integer(), server_default="-1", nullable=False)
        )
        batch_op.add_column(
            sa.Column("preempted_by", sa.String(length=32), server_default="", nullable=False)
        )
        batch_op.create_index("ix_ws_updated", ["updated_at"], unique=False)
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preemptible", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("autoscale", sa.JSON(), server_default="{}", nullable=False))
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "quota_preemptible_instances", sa.Integer(), server_default="0", nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("quota_preemptible_vcpus", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "quota_preemptible_memory_mib",
                sa.BigInteger(),
                server_default="0",
                nullable=False,
            )
        )
    with op.batch_alter_table("usage_intervals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preemptible", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_table(
        "backfill",
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("max_count", sa.Integer(), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("grace_s", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("image"),
    )


def downgrade() -> None:
    op.drop_table("backfill")
    with op.batch_alter_table("usage_intervals", schema=None) as batch_op:
        batch_op.drop_column("preemptible")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("quota_preemptible_memory_mib")
        batch_op.drop_column("quota_preemptible_vcpus")
        batch_op.drop_column("quota_preemptible_instances")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_column("autoscale")
        batch_op.drop_column("preemptible")
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_index("ix_ws_updated")
        batch_op.drop_column("preempted_by")
        batch_op.drop_column("preempt_grace_s")
        batch_op.drop_column("preemptible")
