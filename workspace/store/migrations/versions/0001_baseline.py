"""The schema of the first release with migrations (commit 49a6878), written out in full.

Frozen: it never changes when ``workspace/store/models.py`` changes; later changes are later
revisions. A store created before migrations existed is brought to exactly this schema by
``workspace.store.migrations.legacy`` and then stamped ``0001``.

``default=`` on a column is the Python-side default of the model (no DDL is emitted for it);
the legacy adoption uses it to fill existing rows of a column it adds.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("hypervisor", sa.String(32), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_gib", sa.Integer(), nullable=False, default=0),
        sa.Column("used_cpus", sa.Integer(), nullable=False, default=0),
        sa.Column("used_memory_mib", sa.Integer(), nullable=False, default=0),
        sa.Column("state", sa.String(16), nullable=False, default="READY"),
        sa.Column("drained", sa.Boolean(), nullable=False, default=False),
        sa.Column("last_heartbeat", sa.Float(), nullable=False, default=0.0),
        sa.Column("labels", sa.JSON(), nullable=False, default=dict),
        sa.Column("networks", sa.JSON(), nullable=False, default=list),
        sa.Column("cached_digests", sa.JSON(), nullable=False, default=list),
        sa.Column("peer_address", sa.String(255), nullable=False, default=""),
        sa.Column("cache", sa.JSON(), nullable=False, default=list),
        sa.Column("cache_budget_bytes", sa.BigInteger(), nullable=False, default=0),
        sa.Column("prefetch", sa.JSON(), nullable=False, default=list),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "networks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("subnet", sa.String(64), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("range_start", sa.String(64), nullable=False),
        sa.Column("range_end", sa.String(64), nullable=False),
        sa.Column("bridge", sa.String(15), nullable=False),
        sa.Column("mac_prefix", sa.String(8), nullable=False),
        sa.Column("dns", sa.JSON(), nullable=False, default=list),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "images",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("partitions", sa.JSON(), nullable=False, default=list),
        sa.Column("kernel_digest", sa.String(80), nullable=False, default=""),
        sa.Column("initrd_digest", sa.String(80), nullable=False, default=""),
        sa.Column("cmdline", sa.String(4096), nullable=False, default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("image_spec", sa.JSON(), nullable=False, default=dict),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("claimed_cpus", sa.Integer(), nullable=False, default=0),
        sa.Column("claimed_memory_mib", sa.Integer(), nullable=False, default=0),
        sa.Column("node", sa.String(255), nullable=False, default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False, default=""),
        sa.Column("reboot_count", sa.Integer(), nullable=False, default=0),
        sa.Column("stop_timeout_s", sa.Integer(), nullable=False, default=60),
        sa.Column("force_stop", sa.Boolean(), nullable=False, default=False),
        sa.Column("user_data", sa.LargeBinary(), nullable=False, default=b""),
        sa.Column("cluster", sa.String(64), nullable=False, default=""),
        sa.Column("role", sa.String(64), nullable=False, default=""),
        sa.Column("networks", sa.JSON(), nullable=False, default=list),
        sa.Column("requirements", sa.JSON(), nullable=False, default=dict),
        sa.Column("wait_deadline", sa.Float(), nullable=False, default=0.0),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "request_id", name="uq_request_id"),
        sa.Index("ix_ws_node", "node"),
        sa.Index("ix_ws_owner_name", "owner", "name"),
        sa.Index("ix_ws_state", "state"),
    )
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False, default=""),
        sa.Column("affinity", sa.String(16), nullable=False, default="NONE"),
        sa.Column("on_failure", sa.String(16), nullable=False, default="KEEP"),
        sa.Column("spec", sa.JSON(), nullable=False, default=list),
        sa.Column("wait_deadline", sa.Float(), nullable=False, default=0.0),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "request_id", name="uq_cluster_request_id"),
        sa.Index("ix_cluster_owner_name", "owner", "name"),
    )
    op.create_table(
        "trust_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False, default=0),
        sa.Column("mode", sa.String(16), nullable=False, default="WARN"),
        sa.Column("stop_running_on_revoke", sa.Boolean(), nullable=False, default=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "trust_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("public_key_pem", sa.String(1024), nullable=False),
        sa.Column("image_patterns", sa.JSON(), nullable=False, default=list),
        sa.Column("expires_at", sa.Float(), nullable=False, default=0.0),
        sa.Column("revoked", sa.Boolean(), nullable=False, default=False),
        sa.Column("comment", sa.String(1024), nullable=False, default=""),
        sa.Column("added_at", sa.Float(), nullable=False, default=0.0),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_table(
        "revoked_digests",
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False, default=0.0),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "image_signatures",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("envelope", sa.String(65536), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False, default=""),
        sa.Column("added_at", sa.Float(), nullable=False, default=0.0),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_sig_image", "image"),
    )
    op.create_table(
        "trust_audit",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("source", sa.String(255), nullable=False, default="service"),
        sa.Column("action", sa.String(32), nullable=False, default=""),
        sa.Column("image", sa.String(255), nullable=False, default=""),
        sa.Column("digest", sa.String(2048), nullable=False, default=""),
        sa.Column("key_id", sa.String(64), nullable=False, default=""),
        sa.Column("policy_version", sa.BigInteger(), nullable=False, default=0),
        sa.Column("verdict", sa.String(8), nullable=False, default=""),
        sa.Column("reason", sa.String(2048), nullable=False, default=""),
        sa.Column("workspace_id", sa.String(32), nullable=False, default=""),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_audit_image", "image"),
        sa.Index("ix_audit_at", "at"),
    )
    op.create_table(
        "ip_allocations",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("ip_int", sa.Integer(), nullable=False, default=0),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("nic_index", sa.Integer(), nullable=False, default=0),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["network"], ["networks.name"]),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.UniqueConstraint("network", "ip", name="uq_ip_per_network"),
        sa.UniqueConstraint("mac", name="uq_mac"),
        sa.Index("ix_alloc_workspace", "workspace_id"),
        sa.Index("ix_alloc_network_ip_int", "network", "ip_int"),
    )
    op.create_table(
        "console_logs",
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("total_bytes", sa.Integer(), nullable=False, default=0),
        sa.Column("data", sa.LargeBinary(), nullable=False, default=b""),
        sa.PrimaryKeyConstraint("workspace_id"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    )


def downgrade() -> None:
    for table in (
        "console_logs",
        "ip_allocations",
        "trust_audit",
        "image_signatures",
        "revoked_digests",
        "trust_keys",
        "trust_settings",
        "clusters",
        "workspaces",
        "images",
        "blobs",
        "networks",
        "nodes",
    ):
        op.drop_table(table)
