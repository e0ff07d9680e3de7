"""Service replicas: domain (workspace/domain/replicas.py) -> proto (workspace.v1 Admin)."""

from __future__ import annotations

from workspace.codec.v1 import ts
from workspace.domain.replicas import ReplicaView
from workspace.v1 import admin_pb2


def replica_to_proto(r: ReplicaView) -> admin_pb2.Replica:
    return admin_pb2.Replica(
        id=r.replica_id,
        host=r.host,
        pid=r.pid,
        listen=r.listen,
        node_listen=r.node_listen,
        metrics_url=r.metrics_url,
        started_at=ts(r.started_at),
        leader=r.leader,
    )
