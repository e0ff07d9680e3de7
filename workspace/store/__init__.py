"""Persistent state of the service (SQLAlchemy; SQLite by default)."""

from workspace.store.db import Store
from workspace.store.models import (
    Base,
    Blob,
    Cluster,
    ConsoleLog,
    Image,
    IpAllocation,
    Network,
    Node,
    Project,
    ProjectMember,
    SshKey,
    UsageInterval,
    Workspace,
)

__all__ = [
    "Base",
    "Blob",
    "Cluster",
    "ConsoleLog",
    "Image",
    "IpAllocation",
    "Network",
    "Node",
    "Project",
    "ProjectMember",
    "SshKey",
    "Store",
    "UsageInterval",
    "Workspace",
]
