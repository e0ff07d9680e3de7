"""project_deletions: each deleted project's name, when it was made and when deleted. A
user certificate issued before a project of its name was deleted does not make its
holder a member of the project made again under that name (ops/projects.py
``outdated``). Deletions still in the site's event journal (``project.deleted``) are
copied in, so a project deleted before the upgrade, and made again, is covered too
while its event was kept.

workspaces.grown_by: who asked for a member a cluster grow added ({}: made with the
cluster); a grow waiting for capacity is placed only while they still may make it.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-05 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision: str | None = "0024"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "project_deletions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("deleted_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_project_deletion_name", "project_deletions", ["name"])
    op.execute(
        "INSERT INTO project_deletions (name, created_at, deleted_at) "
        "SELECT subject, 0.0, at FROM site_events WHERE kind = 'project.deleted'"
    )
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grown_by", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("grown_by")
    op.drop_index("ix_project_deletion_name", table_name="project_deletions")
    op.drop_table("project_deletions")
