"""The Nodes API (agents): registration, the order stream, reports, consoles, blobs.

Every call acts for the node its certificate names (``auth.node_name``): a request naming
another node is refused and changes nothing. The node name is bound to the certificate
that registered it (ops/reports.py). Without TLS (insecure mode) the request's node is
taken as given.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator

import grpc

from workspace.codec import guests as codec_guests
from workspace.codec import node as codec_node
from workspace.edge import auth
from workspace.edge.calls import STREAM_POLL_S, each_request, first_request, stream, unary
from workspace.errors import InvalidArgument, Unavailable
from workspace.grants import REFRESH_S
from workspace.identity import Identity
from workspace.log import about
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.ops import consoles, liveness, reports, save
from workspace.ops.events import DEAF_S
from workspace.ops.images import Catalog
from workspace.ops.taskhub import AgentLine, TaskHub
from workspace.ops.unit import Env

log = logging.getLogger("workspace.edge.nodes")


def _serial(who: Identity) -> int:
    return who.serial if who.is_node else 0


class NodesServicer(nodes_pb2_grpc.NodesServicer):
    SERVICE = "workspace.node.v1.Nodes"

    def __init__(self, env: Env, catalog: Catalog, hub: TaskHub | None = None) -> None:
        self.env = env
        # The repository: blobs fetched by agents, saved disks they send (PutBlob).
        self.catalog = catalog
        self.blobs = catalog.blobs
        # The agents' task streams (exec, interactive consoles): shared with Guests.
        self.hub = hub if hub is not None else TaskHub()
        self.auth = auth.for_config(env.cfg)

    # -- messages in, messages out ---------------------------------------------------------

    def register(
        self, req: nodes_pb2.RegisterRequest, cert_serial: int = 0
    ) -> nodes_pb2.RegisterResponse:
        revocations = self.auth.revocations
        interval = reports.register(
            self.env,
            codec_node.node_info_from_proto(req),
            cert_serial,
            revocations.is_revoked if revocations is not None else lambda _serial: False,
        )
        return nodes_pb2.RegisterResponse(heartbeat_interval_s=interval)

    def assignments(self, node: str, cert_serial: int = 0) -> nodes_pb2.AssignmentSet:
        return codec_node.node_orders_to_proto(reports.orders(self.env, node, cert_serial))

    def report(self, req: nodes_pb2.ReportStatusRequest, cert_serial: int = 0) -> None:
        reports.report(self.env, codec_node.report_from_proto(req), cert_serial)

    def check_liveness(self) -> list[str]:
        return liveness.check_liveness(self.env)

    def _node(self, who: Identity, asked: str) -> str:
        return auth.node_name(who, self.auth.insecure, asked)

    # -- RPCs ------------------------------------------------------------------------------

    @unary
    def Register(
        self, request: nodes_pb2.RegisterRequest, context: grpc.ServicerContext, who: Identity
    ) -> nodes_pb2.RegisterResponse:
        self._node(who, request.node)
        return self.register(request, _serial(who))

    @stream
    def WatchAssignments(
        self,
        request: nodes_pb2.WatchAssignmentsRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> Iterator[nodes_pb2.AssignmentSet]:
        node = self._node(who, request.node)
        serial = _serial(who)
        notifier = self.env.notifier
        seen = notifier.generation(node)
        signer = self.env.grant_signer
        sent = self.env.clock()
        # The signer's pair before the set is made: one read while it is made is sent too.
        signed = signer.refresh() if signer is not None else 0
        yield self.assignments(node, serial)
        while context.is_active() and not notifier.closed:
            self.auth.check_revoked(who)
            gen = notifier.wait_node(node, seen, STREAM_POLL_S)
            # Sent again, unchanged but for fresh peer grants, before those expire, and
            # once the service's certificate was rotated (its grants signed by the new one).
            stale = signer is not None and (
                self.env.clock() - sent >= REFRESH_S or signer.refresh() != signed
            )
            if gen != seen or stale:
                seen = gen
                sent = self.env.clock()
                signed = signer.refresh() if signer is not None else 0
                yield self.assignments(node, serial)

    @unary
    def ReportStatus(
        self, request: nodes_pb2.ReportStatusRequest, context: grpc.ServicerContext, who: Identity
    ) -> nodes_pb2.ReportStatusResponse:
        self._node(who, request.node)
        self.report(request, _serial(who))
        return nodes_pb2.ReportStatusResponse()

    @unary
    def PushConsole(
        self, request: nodes_pb2.PushConsoleRequest, context: grpc.ServicerContext, who: Identity
    ) -> nodes_pb2.PushConsoleResponse:
        node = self._node(who, request.node)
        if who.is_node:
            reports.check_node(self.env, node, who.serial)
        offset = consoles.push_console(
            self.env,
            node,
            request.workspace_id,
            request.offset,
            request.data,
            request.reset,
        )
        return nodes_pb2.PushConsoleResponse(next_offset=offset)

    @stream
    def Tasks(
        self,
        request: Iterator[nodes_pb2.TaskReply],
        context: grpc.ServicerContext,
        who: Identity,
    ) -> Iterator[nodes_pb2.Task]:
        # The hello names the node (the certificate's, under TLS); then tasks go out as
        # operations make them and replies come in on a thread of their own.
        hello = first_request(request, "Tasks: the hello (the first message, naming the node)")
        if hello is None or not hello.node:
            raise InvalidArgument(
                "Tasks: the first message must be a hello naming the node (TaskReply.node)"
            )
        node = self._node(who, hello.node)
        if who.is_node:
            reports.check_node(self.env, node, who.serial)
        line = self.hub.connect(node)
        threading.Thread(
            target=self._replies, args=(request, line), name=f"tasks-{node}", daemon=True
        ).start()
        try:
            while context.is_active() and not line.closed and not self.env.notifier.closed:
                self.auth.check_revoked(who)
                deaf = self.env.notifier.deaf_for()
                if deaf > DEAF_S:
                    # Cut off from the database: no other replica can forward a task
                    # here. The agent opens its stream on the next replica of its list.
                    raise Unavailable(
                        f"this replica has not heard the others for {deaf:.0f} s (its "
                        "database connection is down): open the task stream elsewhere"
                    )
                task = line.next(STREAM_POLL_S)
                if task is not None:
                    yield codec_guests.task_to_proto(task)
        finally:
            self.hub.disconnect(line)

    def _replies(self, request: Iterator[nodes_pb2.TaskReply], line: AgentLine) -> None:
        """Hand every reply of one agent stream to the hub until the stream ends."""
        why = "the agent closed it"
        try:
            for reply in request:
                self.hub.deliver(line, codec_guests.reply_from_proto(reply))
        except grpc.RpcError:
            why = "the stream broke"
        except Exception:
            log.exception("task replies from node %s failed", line.node)
            why = "a reply could not be read"
        finally:
            self.hub.disconnect(line, why)

    @stream
    def FetchBlob(
        self, request: nodes_pb2.FetchBlobRequest, context: grpc.ServicerContext, who: Identity
    ) -> Iterator[nodes_pb2.BlobData]:
        node = self._node(who, request.node)
        if who.is_node:
            reports.may_fetch(self.env, node, request.digest, who.serial)
        repo = self.blobs
        total = repo.size(request.digest) if repo.has(request.digest) else 0
        for chunk in repo.read(request.digest, request.offset):
            yield nodes_pb2.BlobData(data=chunk, total_size=total)

    @unary
    def PutBlob(
        self,
        request_iterator: Iterator[nodes_pb2.PutBlobChunk],
        context: grpc.ServicerContext,
        who: Identity,
    ) -> nodes_pb2.PutBlobResponse:
        chunks_in = each_request(request_iterator, context, "PutBlob: the next chunk")
        first = next(chunks_in, None)
        if first is None:
            raise InvalidArgument("PutBlob: no message (the first names the node and workspace)")
        node = self._node(who, first.node)
        if who.is_node:
            reports.check_node(self.env, node, who.serial)
        save.may_send(self.env, node, first.workspace_id)
        chunks = itertools.chain([first.data], (c.data for c in chunks_in))
        counted = save.progress(
            self.env, first.workspace_id, first.partition, max(0, first.size_bytes), chunks
        )
        # The save vouches for it, as a blob this node sent.
        digest, size = self.catalog.upload_blob(counted, None, save.holder(node))
        log.info(
            "node %s sent %s (%d bytes) of workspace %s's save",
            node,
            digest,
            size,
            first.workspace_id,
            extra=about(first.workspace_id, node),
        )
        return nodes_pb2.PutBlobResponse(digest=digest, size_bytes=size)
