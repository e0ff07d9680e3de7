"""The Clusters API: decode, call ops/clusters.py, encode."""

from __future__ import annotations

import grpc

from workspace.codec import v1
from workspace.domain.states import Op
from workspace.edge.calls import caller, unary
from workspace.ops import clusters
from workspace.ops.unit import Env
from workspace.v1 import clusters_pb2, clusters_pb2_grpc


class ClustersServicer(clusters_pb2_grpc.ClustersServicer):
    def __init__(self, env: Env) -> None:
        self.env = env
        self.default_owner = env.cfg.default_owner

    def _owner(self, context: grpc.ServicerContext) -> str:
        return caller(context, self.default_owner)

    def create(self, owner: str, req: clusters_pb2.CreateClusterRequest) -> clusters_pb2.Cluster:
        view = clusters.create(self.env, owner, v1.cluster_request_from_proto(req))
        return v1.cluster_to_proto(view)

    def operate(self, owner: str, ref: str, op: Op) -> clusters_pb2.Cluster:
        return v1.cluster_to_proto(clusters.operate(self.env, owner, ref, op))

    @unary
    def CreateCluster(
        self, request: clusters_pb2.CreateClusterRequest, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.create(self._owner(context), request)

    @unary
    def GetCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return v1.cluster_to_proto(clusters.get(self.env, self._owner(context), request.id))

    @unary
    def ListClusters(
        self, request: clusters_pb2.ListClustersRequest, context: grpc.ServicerContext
    ) -> clusters_pb2.ListClustersResponse:
        rows = clusters.list_clusters(self.env, self._owner(context), request.include_terminated)
        return clusters_pb2.ListClustersResponse(clusters=[v1.cluster_to_proto(c) for c in rows])

    @unary
    def StartCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.operate(self._owner(context), request.id, Op.START)

    @unary
    def StopCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.operate(self._owner(context), request.id, Op.STOP)

    @unary
    def DestroyCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.operate(self._owner(context), request.id, Op.DESTROY)
