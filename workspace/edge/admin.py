"""The Admin API: nodes, networks, caches, the capacity queue, the scheduler's input, site
events, backfill, the service's replicas."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from workspace.codec import backfill as codec_backfill
from workspace.codec import events as codec_events
from workspace.codec import node as codec_node
from workspace.codec import replicas as codec_replicas
from workspace.codec import v1
from workspace.domain.replicas import ReplicaView
from workspace.edge import auth
from workspace.edge.calls import stream, unary
from workspace.edge.event_stream import events_out
from workspace.errors import InvalidArgument
from workspace.identity import Identity
from workspace.ops import backfill, networks, nodes, queue, site_events, usage
from workspace.ops.unit import Env
from workspace.v1 import admin_pb2, admin_pb2_grpc, usage_pb2


class AdminServicer(admin_pb2_grpc.AdminServicer):
    SERVICE = "workspace.v1.Admin"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.auth = auth.for_config(env.cfg)
        # The live service replicas (service/main.py ``Service.replicas``).
        self.replicas: Callable[[], list[ReplicaView]] = list

    def create_network(self, request: admin_pb2.Network) -> admin_pb2.Network:
        return v1.network_to_proto(
            networks.create_network(self.env, v1.network_from_proto(request))
        )

    def usage(self, request: usage_pb2.GetUsageRequest) -> usage_pb2.UsageReport:
        """Every workspace's usage."""
        since, until, by = v1.usage_query_from_proto(request)
        page = usage.Page(request.page_size, request.page_token)
        return v1.usage_report_to_proto(usage.report(self.env, None, since, until, by, (), page))

    @unary
    def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: grpc.ServicerContext, who: Identity
    ) -> usage_pb2.UsageReport:
        return self.usage(request)

    @unary
    def DrainNode(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.Node:
        return v1.node_to_proto(nodes.set_drained(self.env, request.name, True))

    @unary
    def EnableNode(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.Node:
        return v1.node_to_proto(nodes.set_drained(self.env, request.name, False))

    @unary
    def RemoveNode(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.Node:
        return v1.node_to_proto(nodes.remove(self.env, request.name))

    @unary
    def ListQueue(
        self, request: admin_pb2.ListQueueRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.ListQueueResponse:
        entries = [v1.queue_entry_to_proto(e) for e in queue.list_queue(self.env)]
        return admin_pb2.ListQueueResponse(entries=entries)

    @unary
    def GetSchedulerInput(
        self, request: admin_pb2.SchedulerInputRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.SchedulerInput:
        text = nodes.scheduler_input(
            self.env,
            request.image,
            request.cpus,
            request.memory_mib,
            list(request.networks),
            dict(request.requirements),
            request.preemptible,
        )
        return admin_pb2.SchedulerInput(json=text)

    @unary
    def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.ListNodesResponse:
        listed = [v1.node_to_proto(n) for n in nodes.list_nodes(self.env)]
        return admin_pb2.ListNodesResponse(nodes=listed)

    @unary
    def ListCache(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.ListCacheResponse:
        return codec_node.node_cache_to_proto(nodes.list_cache(self.env, request.name))

    @unary
    def PreloadImage(
        self, request: admin_pb2.PreloadImageRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.PreloadImageResponse:
        done, digests, cached = nodes.preload(self.env, request.image, list(request.nodes))
        return admin_pb2.PreloadImageResponse(nodes=done, digests=digests, cached=cached)

    @unary
    def CreateNetwork(
        self, request: admin_pb2.Network, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.Network:
        return self.create_network(request)

    @unary
    def ListNetworks(
        self, request: admin_pb2.ListNetworksRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.ListNetworksResponse:
        listed = [v1.network_to_proto(n) for n in networks.list_networks(self.env, who)]
        return admin_pb2.ListNetworksResponse(networks=listed)

    @unary
    def DeleteNetwork(
        self, request: admin_pb2.NetworkRef, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.Network:
        return v1.network_to_proto(networks.delete_network(self.env, request.name))

    @unary
    def UpdateNetwork(
        self, request: admin_pb2.UpdateNetworkRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.Network:
        if not (request.set_dns or request.set_range):
            raise InvalidArgument(f"network {request.name}: nothing to change (set_dns, set_range)")
        # A part given without its flag would be left as it is while the call succeeds.
        if request.dns and not request.set_dns:
            raise InvalidArgument(f"network {request.name}: dns given without set_dns")
        if (request.range_start or request.range_end) and not request.set_range:
            raise InvalidArgument(f"network {request.name}: a range given without set_range")
        net = networks.update_network(
            self.env,
            request.name,
            dns=list(request.dns) if request.set_dns else None,
            addresses=(request.range_start, request.range_end) if request.set_range else None,
        )
        return v1.network_to_proto(net)

    @stream
    def WatchEvents(
        self, request: admin_pb2.WatchEventsRequest, context: grpc.ServicerContext, who: Identity
    ) -> Iterator[admin_pb2.SiteEvent]:
        since, follow, which, after_id = codec_events.watch_request_from_proto(request)
        yield from events_out(
            self.env,
            self.auth,
            who,
            context,
            follow,
            lambda gone: site_events.of_site(self.env, who, since, follow, gone, which, after_id),
        )

    @unary
    def SetBackfill(
        self, request: admin_pb2.BackfillEntry, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.BackfillEntry:
        view = backfill.set_entry(self.env, codec_backfill.entry_from_proto(request))
        return codec_backfill.entry_to_proto(view)

    @unary
    def ListBackfill(
        self, request: admin_pb2.ListBackfillRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.ListBackfillResponse:
        listed = [codec_backfill.entry_to_proto(v) for v in backfill.list_entries(self.env)]
        return admin_pb2.ListBackfillResponse(entries=listed)

    @unary
    def ClearBackfill(
        self, request: admin_pb2.ClearBackfillRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.BackfillEntry:
        return codec_backfill.entry_to_proto(backfill.clear_entry(self.env, request.image))

    @unary
    def ListReplicas(
        self, request: admin_pb2.ListReplicasRequest, context: grpc.ServicerContext, who: Identity
    ) -> admin_pb2.ListReplicasResponse:
        listed = [codec_replicas.replica_to_proto(r) for r in self.replicas()]
        return admin_pb2.ListReplicasResponse(replicas=listed)
