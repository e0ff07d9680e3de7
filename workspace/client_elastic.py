"""The elastic-cluster half of the Python client (``Client`` inherits it): scale a
cluster's role, set or clear its autoscaler (docs/design/elastic-clusters.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from workspace.v1 import clusters_pb2, clusters_pb2_grpc

T = TypeVar("T")


class ElasticClientMixin:
    """Needs ``_call`` and ``_clusters`` from the Client."""

    _clusters: clusters_pb2_grpc.ClustersStub

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def scale_cluster(
        self, id: str, role: str, count: int, wait_for_capacity_s: int = 0
    ) -> clusters_pb2.ScaleClusterResponse:
        """Grow or shrink ``role`` of cluster ``id`` to ``count`` members (idempotent:
        scaling to the count it has changes nothing)."""
        req = clusters_pb2.ScaleClusterRequest(
            id=id, role=role, count=count, wait_for_capacity_s=wait_for_capacity_s
        )
        return self._call(self._clusters.ScaleCluster, req)

    def set_autoscale(
        self,
        id: str,
        role: str,
        *,
        min: int = 0,
        max: int = 0,
        signal: str = "",
        cooldown_s: int = 0,
        off: bool = False,
    ) -> clusters_pb2.Cluster:
        """Scale ``role`` on ``signal`` ("slurm-queue[:PARTITION]", "command:/PATH")
        within [min, max], or turn that ``off``."""
        req = clusters_pb2.SetAutoscaleRequest(
            id=id, role=role, min=min, max=max, signal=signal, cooldown_s=cooldown_s, off=off
        )
        return self._call(self._clusters.SetAutoscale, req)
