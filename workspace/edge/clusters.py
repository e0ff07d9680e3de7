"""The Clusters API: decode, call ops/clusters.py, encode."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from workspace.codec import events as codec_events
from workspace.codec import v1
from workspace.domain.model import ClusterView
from workspace.domain.states import Op
from workspace.edge import auth
from workspace.edge.calls import stream, unary
from workspace.edge.event_stream import events_out
from workspace.identity import Identity
from workspace.ops import autoscale, cluster_leases, cluster_scale, clusters, site_events
from workspace.ops.unit import Env
from workspace.v1 import admin_pb2, clusters_pb2, clusters_pb2_grpc


def shown(who: Identity | str, view: ClusterView) -> clusters_pb2.Cluster:
    """The cluster as the caller may see it (``clusters.as_seen_by``), encoded."""
    return v1.cluster_to_proto(clusters.as_seen_by(view, who))


class ClustersServicer(clusters_pb2_grpc.ClustersServicer):
    SERVICE = "workspace.v1.Clusters"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.auth = auth.for_config(env.cfg)
        # Called after a scale changed members (the leader's roster pusher, if here).
        self.on_scaled: Callable[[], None] | None = None

    def create(
        self, who: Identity | str, req: clusters_pb2.CreateClusterRequest
    ) -> clusters_pb2.Cluster:
        view = clusters.create(self.env, who, v1.cluster_request_from_proto(req))
        return shown(who, view)

    def operate(self, who: Identity | str, ref: str, op: Op) -> clusters_pb2.Cluster:
        return shown(who, clusters.operate(self.env, who, ref, op))

    @unary
    def CreateCluster(
        self,
        request: clusters_pb2.CreateClusterRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> clusters_pb2.Cluster:
        return self.create(who, request)

    @unary
    def GetCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext, who: Identity
    ) -> clusters_pb2.Cluster:
        return shown(who, clusters.get(self.env, who, request.id))

    @unary
    def ListClusters(
        self,
        request: clusters_pb2.ListClustersRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> clusters_pb2.ListClustersResponse:
        rows, token = clusters.list_page(
            self.env,
            who,
            request.include_terminated,
            request.page_size,
            request.page_token,
            request.all_users,
            request.mine,
        )
        return clusters_pb2.ListClustersResponse(
            clusters=[shown(who, c) for c in rows], next_page_token=token, mine=request.mine
        )

    @unary
    def StartCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext, who: Identity
    ) -> clusters_pb2.Cluster:
        return self.operate(who, request.id, Op.START)

    @unary
    def StopCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext, who: Identity
    ) -> clusters_pb2.Cluster:
        return self.operate(who, request.id, Op.STOP)

    @unary
    def DestroyCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext, who: Identity
    ) -> clusters_pb2.Cluster:
        return self.operate(who, request.id, Op.DESTROY)

    @unary
    def ScaleCluster(
        self,
        request: clusters_pb2.ScaleClusterRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> clusters_pb2.ScaleClusterResponse:
        view, result = cluster_scale.scale(
            self.env, who, request.id, request.role, request.count, request.wait_for_capacity_s
        )
        if self.on_scaled is not None and (result.added or result.removed):
            self.on_scaled()
        return v1.scale_to_proto(clusters.as_seen_by(view, who), result)

    @unary
    def SetAutoscale(
        self,
        request: clusters_pb2.SetAutoscaleRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> clusters_pb2.Cluster:
        view = autoscale.set_autoscale(
            self.env,
            who,
            request.id,
            request.role,
            request.off,
            request.min,
            request.max,
            request.signal,
            request.cooldown_s,
        )
        return shown(who, view)

    @unary
    def ExtendClusterLease(
        self,
        request: clusters_pb2.ExtendClusterLeaseRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> clusters_pb2.Cluster:
        return shown(who, cluster_leases.extend(self.env, who, request.id, request.add_s))

    @stream
    def WatchClusterEvents(
        self,
        request: clusters_pb2.WatchClusterEventsRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> Iterator[admin_pb2.SiteEvent]:
        ref, since, follow, kinds, after_id = codec_events.subject_watch_from_proto(request)
        yield from events_out(
            self.env,
            self.auth,
            who,
            context,
            follow,
            lambda gone: site_events.of_cluster(
                self.env, who, ref, since, follow, gone, kinds, after_id
            ),
        )
