"""contextualization: images and workspaces take a NoCloud seed (context, login user,
host keys, the owner's keys at create), clusters an SSH key pair, users SSH keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 00:42:24.637567
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ssh_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("public_key", sa.String(length=16384), nullable=False),
        sa.Column("comment", sa.String(length=1024), nullable=False),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "fingerprint", name="uq_ssh_key_per_owner"),
    )
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("key_private", sa.String(length=4096), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("key_public", sa.String(length=1024), server_default="", nullable=False)
        )

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("context", sa.String(length=16), server_default="none", nullable=False)
        )
        batch_op.add_column(
            sa.Column("login_user", sa.String(length=64), server_default="", nullable=False)
        )

    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("context", sa.String(length=16), server_default="none", nullable=False)
        )
        batch_op.add_column(
            sa.Column("login_user", sa.String(length=64), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("host_key_private", sa.String(length=4096), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("host_key_public", sa.String(length=1024), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("authorized_keys", sa.JSON(), server_default="[]", nullable=False)
        )
        batch_op.add_column(
            sa.Column("seed_bytes", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("seed_bytes")
        batch_op.drop_column("authorized_keys")
        batch_op.drop_column("host_key_public")
        batch_op.drop_column("host_key_private")
        batch_op.drop_column("login_user")
        batch_op.drop_column("context")

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("login_user")
        batch_op.drop_column("context")

    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_column("key_public")
        batch_op.drop_column("key_private")

    op.drop_table("ssh_keys")
