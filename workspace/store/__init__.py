"""Persistent state of the service (SQLAlchemy; SQLite by default)."""

from workspace.store.db import Store
from workspace.store.models import (
    Backfill,
    Base,
    Blob,
    BlobHolder,
    Cluster,
    ConsoleLog,
    Image,
    IpAllocation,
    Network,
    Node,
    Project,
    ProjectDeletion,
    ProjectMember,
    SshKey,
    UsageInterval,
    Workspace,
)
from workspace.store.site_events import EventRow

__all__ = [
    "Backfill",
    "Base",
    "Blob",
    "BlobHolder",
    "Cluster",
    "ConsoleLog",
    "EventRow",
    "Image",
    "IpAllocation",
    "Network",
    "Node",
    "Project",
    "ProjectDeletion",
    "ProjectMember",
    "SshKey",
    "Store",
    "UsageInterval",
    "Workspace",
]
