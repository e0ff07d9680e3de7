"""A service replica as an admin sees it (`ws-admin replica list`; docs/design/replicas.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    """A live service replica: on PostgreSQL as the registry shows it
    (service/registry.py), on SQLite the one process itself."""

    replica_id: str
    host: str
    pid: int
    listen: str  # its address for clients, as bound
    node_listen: str  # its address for agents, as bound
    started_at: float  # epoch seconds
    metrics_url: str = ""  # "" when it serves no metrics (no metrics_listen)
    leader: bool = False  # it holds the leader lock now (runs the background loops)

    def describe(self) -> str:
        return f"{self.replica_id} (pid {self.pid} on {self.host or 'an unknown host'})"
