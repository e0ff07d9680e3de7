"""trust_audit.workspace_name: a create's decision names the workspace asked for. A create
refused after its trust decision (no capacity, a quota, an untrusted image) made no
workspace, yet its audit row kept the id the workspace would have had; such a row now has
no id and names the request by this name. Rows written before keep what they said
(their name is "": which of their ids were never made is not known).

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-05 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision: str | None = "0031"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("trust_audit", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("workspace_name", sa.String(length=63), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("trust_audit", schema=None) as batch_op:
        batch_op.drop_column("workspace_name")
