"""nodes.cached_digests holds only the blobs the service believes a node holds (those it
let the node have: ops/cache_claims.py). What nodes reported before was kept as they
said it, a compromised node's claims with it: it is emptied, and each node's next full
report (seconds later) fills it again with what is believed. The blobs of workspaces gone
before the upgrade no longer count for that node until it is given them again.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-05 18:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0030"
down_revision: str | None = "0029"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("UPDATE nodes SET cached_digests = '[]'")


def downgrade() -> None:
    pass  # the old release takes the nodes' word again at their next report
