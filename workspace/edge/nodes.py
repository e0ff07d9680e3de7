"""The Nodes API (agents): registration, the order stream, reports, consoles, blobs."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from workspace.codec import node as codec_node
from workspace.edge.calls import STREAM_POLL_S, stream, unary
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.ops import consoles, liveness, reports
from workspace.ops.unit import Env
from workspace.store.blobs import BlobRepository


class NodesServicer(nodes_pb2_grpc.NodesServicer):
    def __init__(self, env: Env, blobs: BlobRepository) -> None:
        self.env = env
        self.blobs = blobs

    # -- messages in, messages out ---------------------------------------------------------

    def register(self, req: nodes_pb2.RegisterRequest) -> nodes_pb2.RegisterResponse:
        interval = reports.register(self.env, codec_node.node_info_from_proto(req))
        return nodes_pb2.RegisterResponse(heartbeat_interval_s=interval)

    def assignments(self, node: str) -> nodes_pb2.AssignmentSet:
        return codec_node.node_orders_to_proto(reports.orders(self.env, node))

    def report(self, req: nodes_pb2.ReportStatusRequest) -> None:
        reports.report(self.env, codec_node.report_from_proto(req))

    def check_liveness(self) -> list[str]:
        return liveness.check_liveness(self.env)

    # -- RPCs ------------------------------------------------------------------------------

    @unary
    def Register(
        self, request: nodes_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.RegisterResponse:
        return self.register(request)

    @stream
    def WatchAssignments(
        self, request: nodes_pb2.WatchAssignmentsRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.AssignmentSet]:
        notifier = self.env.notifier
        seen = notifier.generation(request.node)
        yield self.assignments(request.node)
        while context.is_active() and not notifier.closed:
            gen = notifier.wait_node(request.node, seen, STREAM_POLL_S)
            if gen != seen:
                seen = gen
                yield self.assignments(request.node)

    @unary
    def ReportStatus(
        self, request: nodes_pb2.ReportStatusRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.ReportStatusResponse:
        self.report(request)
        return nodes_pb2.ReportStatusResponse()

    @unary
    def PushConsole(
        self, request: nodes_pb2.PushConsoleRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.PushConsoleResponse:
        offset = consoles.push_console(
            self.env,
            request.node,
            request.workspace_id,
            request.offset,
            request.data,
            request.reset,
        )
        return nodes_pb2.PushConsoleResponse(next_offset=offset)

    @stream
    def FetchBlob(
        self, request: nodes_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.BlobData]:
        repo = self.blobs
        total = repo.size(request.digest) if repo.has(request.digest) else 0
        for chunk in repo.read(request.digest, request.offset):
            yield nodes_pb2.BlobData(data=chunk, total_size=total)
