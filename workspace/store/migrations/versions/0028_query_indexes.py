"""indexes for the queries a large site runs often: a project's workspaces (the quota
check of every create, members' `ws list`), a cluster's members, the lease pass, the
paged lists by creation, and a workspace's events by name (`ws events NAME`)

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-05 11:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0028"
down_revision: str | None = "0027"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.create_index("ix_ws_project", ["project"], unique=False)
        batch_op.create_index("ix_ws_cluster", ["cluster"], unique=False)
        batch_op.create_index("ix_ws_lease", ["lease_expires_at"], unique=False)
        batch_op.create_index("ix_ws_created", ["created_at", "id"], unique=False)
    with op.batch_alter_table("site_events", schema=None) as batch_op:
        batch_op.create_index("ix_event_workspace_name", ["workspace_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("site_events", schema=None) as batch_op:
        batch_op.drop_index("ix_event_workspace_name")
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_index("ix_ws_created")
        batch_op.drop_index("ix_ws_lease")
        batch_op.drop_index("ix_ws_cluster")
        batch_op.drop_index("ix_ws_project")
