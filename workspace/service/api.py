"""Thin gRPC servicers: translate messages, call Core/Nodes/Catalog, map errors."""

from __future__ import annotations

import functools
import logging
import queue
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from workspace import rpc_status
from workspace.domain.states import Op
from workspace.errors import InvalidArgument, WorkspaceError
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.service.catalog import Catalog
from workspace.service.clusters import Clusters
from workspace.service.core import Core
from workspace.service.nodes import Nodes
from workspace.service.queue import CapacityQueue
from workspace.service.trust import TrustStore
from workspace.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2,
    images_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

log = logging.getLogger("workspace.service.api")
F = TypeVar("F", bound=Callable[..., Any])

# How often a stream wakes up to check that its client is still there.
STREAM_POLL_S = 5.0


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, WorkspaceError):
        if not exc.expected:
            log.error("%s failed: %s", method, exc.message)
        context.abort(rpc_status.status_of(exc), exc.message)
    log.exception("%s failed unexpectedly", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {exc}")


def unary(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            _abort(context, exc, fn.__name__)

    return wrapper  # type: ignore[return-value]


def stream(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:
            _abort(context, exc, fn.__name__)

    return wrapper  # type: ignore[return-value]


def caller(context: grpc.ServicerContext, default: str) -> str:
    """The identity of the caller: the certificate's CN under mTLS, else the default."""
    auth = context.auth_context()
    cns = auth.get("x509_common_name") if auth else None
    if cns:
        return str(cns[0].decode())
    return default


class WorkspacesServicer(workspaces_pb2_grpc.WorkspacesServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.default_owner = core.cfg.default_owner

    def _owner(self, context: grpc.ServicerContext) -> str:
        return caller(context, self.default_owner)

    @unary
    def CreateWorkspace(
        self, request: workspaces_pb2.CreateWorkspaceRequest, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self.core.create(self._owner(context), request)

    @unary
    def GetWorkspace(
        self, request: workspaces_pb2.GetWorkspaceRequest, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self.core.get(self._owner(context), request.id)

    @unary
    def ListWorkspaces(
        self, request: workspaces_pb2.ListWorkspacesRequest, context: grpc.ServicerContext
    ) -> workspaces_pb2.ListWorkspacesResponse:
        rows, token = self.core.list_page(
            self._owner(context),
            request.include_terminated,
            request.page_size,
            request.page_token,
        )
        return workspaces_pb2.ListWorkspacesResponse(workspaces=rows, next_page_token=token)

    def _op(self, request: Any, context: grpc.ServicerContext, op: Op) -> common_pb2.Workspace:
        return self.core.operate(self._owner(context), request.id, op)

    @unary
    def StartWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self._op(request, context, Op.START)

    @unary
    def StopWorkspace(
        self, request: workspaces_pb2.StopWorkspaceRequest, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        if request.timeout_s < 0:
            raise InvalidArgument("timeout_s must not be negative")
        return self.core.operate(
            self._owner(context), request.id, Op.STOP, request.timeout_s, request.force
        )

    @unary
    def RebootWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self._op(request, context, Op.REBOOT)

    @unary
    def PauseWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self._op(request, context, Op.PAUSE)

    @unary
    def ResumeWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self._op(request, context, Op.RESUME)

    @unary
    def DestroyWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self._op(request, context, Op.DESTROY)

    @stream
    def WatchWorkspaces(
        self, request: workspaces_pb2.WatchWorkspacesRequest, context: grpc.ServicerContext
    ) -> Iterator[workspaces_pb2.WorkspaceEvent]:
        owner = self._owner(context)
        target = ""
        if request.id:
            target = self.core.get(owner, request.id).id

        def accepts(ws: common_pb2.Workspace) -> bool:
            return ws.owner == owner and (not target or ws.id == target)

        watcher = self.core.notifier.subscribe(accepts)
        try:
            if target:
                initial = [self.core.get(owner, target)]
            else:
                initial = self.core.list(owner, request.include_terminated)
            for ws in initial:
                yield workspaces_pb2.WorkspaceEvent(workspace=ws, initial=True)
            while context.is_active() and not self.core.notifier.closed:
                try:
                    ev = watcher.events.get(timeout=STREAM_POLL_S)
                except queue.Empty:
                    continue
                if ev is None:
                    return
                if watcher.overflowed:
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "watch fell too far behind; re-open it"
                    )
                yield workspaces_pb2.WorkspaceEvent(workspace=ev)
        finally:
            self.core.notifier.unsubscribe(watcher)

    @unary
    def GetConsole(
        self, request: workspaces_pb2.GetConsoleRequest, context: grpc.ServicerContext
    ) -> workspaces_pb2.ConsoleOutput:
        data = self.core.console(self._owner(context), request.id, request.tail_bytes)
        return workspaces_pb2.ConsoleOutput(data=data)


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def UploadBlob(
        self, request_iterator: Iterator[images_pb2.BlobChunk], context: grpc.ServicerContext
    ) -> images_pb2.BlobRef:
        try:
            return self.catalog.upload_blob(c.data for c in request_iterator)
        except Exception as exc:
            _abort(context, exc, "UploadBlob")
            raise

    @unary
    def ImportImage(
        self, request: images_pb2.ImportImageRequest, context: grpc.ServicerContext
    ) -> images_pb2.Image:
        return self.catalog.import_image(caller(context, self.catalog.cfg.default_owner), request)

    @unary
    def ListImages(
        self, request: images_pb2.ListImagesRequest, context: grpc.ServicerContext
    ) -> images_pb2.ListImagesResponse:
        return images_pb2.ListImagesResponse(images=self.catalog.list_images())

    @unary
    def GetImage(
        self, request: images_pb2.GetImageRequest, context: grpc.ServicerContext
    ) -> images_pb2.Image:
        return self.catalog.get_image(request.name)

    @unary
    def HasBlobs(
        self, request: images_pb2.HasBlobsRequest, context: grpc.ServicerContext
    ) -> images_pb2.HasBlobsResponse:
        return images_pb2.HasBlobsResponse(missing=self.catalog.has_blobs(request.digests))

    @unary
    def DeleteImage(
        self, request: images_pb2.GetImageRequest, context: grpc.ServicerContext
    ) -> images_pb2.Image:
        owner = caller(context, self.catalog.cfg.default_owner)
        return self.catalog.delete_image(owner, request.name)

    @unary
    def GetRepositoryUsage(
        self, request: images_pb2.RepositoryUsageRequest, context: grpc.ServicerContext
    ) -> images_pb2.RepositoryUsage:
        return self.catalog.repository_usage(caller(context, self.catalog.cfg.default_owner))


class ClustersServicer(clusters_pb2_grpc.ClustersServicer):
    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters
        self.default_owner = clusters.cfg.default_owner

    def _owner(self, context: grpc.ServicerContext) -> str:
        return caller(context, self.default_owner)

    @unary
    def CreateCluster(
        self, request: clusters_pb2.CreateClusterRequest, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.clusters.create(self._owner(context), request)

    @unary
    def GetCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.clusters.get(self._owner(context), request.id)

    @unary
    def ListClusters(
        self, request: clusters_pb2.ListClustersRequest, context: grpc.ServicerContext
    ) -> clusters_pb2.ListClustersResponse:
        rows = self.clusters.list(self._owner(context), request.include_terminated)
        return clusters_pb2.ListClustersResponse(clusters=rows)

    @unary
    def StartCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.clusters.operate(self._owner(context), request.id, Op.START)

    @unary
    def StopCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.clusters.operate(self._owner(context), request.id, Op.STOP)

    @unary
    def DestroyCluster(
        self, request: clusters_pb2.ClusterRef, context: grpc.ServicerContext
    ) -> clusters_pb2.Cluster:
        return self.clusters.operate(self._owner(context), request.id, Op.DESTROY)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, nodes: Nodes, catalog: Catalog, queue: CapacityQueue) -> None:
        self.nodes = nodes
        self.catalog = catalog
        self.queue = queue

    @unary
    def DrainNode(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext
    ) -> admin_pb2.Node:
        return self.nodes.set_drained(request.name, True)

    @unary
    def EnableNode(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext
    ) -> admin_pb2.Node:
        node = self.nodes.set_drained(request.name, False)
        self.nodes.core.notifier.capacity_changed()
        return node

    @unary
    def RemoveNode(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext
    ) -> admin_pb2.Node:
        return self.nodes.remove(request.name)

    @unary
    def ListQueue(
        self, request: admin_pb2.ListQueueRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListQueueResponse:
        return admin_pb2.ListQueueResponse(entries=self.queue.list())

    @unary
    def GetSchedulerInput(
        self, request: admin_pb2.SchedulerInputRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SchedulerInput:
        return admin_pb2.SchedulerInput(json=self.nodes.scheduler_input(request))

    @unary
    def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListNodesResponse:
        return admin_pb2.ListNodesResponse(nodes=self.nodes.list_nodes())

    @unary
    def ListCache(
        self, request: admin_pb2.NodeRef, context: grpc.ServicerContext
    ) -> admin_pb2.ListCacheResponse:
        return self.nodes.list_cache(request.name)

    @unary
    def PreloadImage(
        self, request: admin_pb2.PreloadImageRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PreloadImageResponse:
        return self.nodes.preload(request.image, list(request.nodes))

    @unary
    def CreateNetwork(
        self, request: admin_pb2.Network, context: grpc.ServicerContext
    ) -> admin_pb2.Network:
        return self.catalog.create_network(request)

    @unary
    def ListNetworks(
        self, request: admin_pb2.ListNetworksRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListNetworksResponse:
        return admin_pb2.ListNetworksResponse(networks=self.catalog.list_networks())


class NodesServicer(nodes_pb2_grpc.NodesServicer):
    def __init__(self, nodes: Nodes, catalog: Catalog) -> None:
        self.nodes = nodes
        self.catalog = catalog

    @unary
    def Register(
        self, request: nodes_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.RegisterResponse:
        return self.nodes.register(request)

    @stream
    def WatchAssignments(
        self, request: nodes_pb2.WatchAssignmentsRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.AssignmentSet]:
        notifier = self.nodes.core.notifier
        seen = notifier.generation(request.node)
        yield self.nodes.assignments(request.node)
        while context.is_active() and not notifier.closed:
            gen = notifier.wait_node(request.node, seen, STREAM_POLL_S)
            if gen != seen:
                seen = gen
                yield self.nodes.assignments(request.node)

    @unary
    def ReportStatus(
        self, request: nodes_pb2.ReportStatusRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.ReportStatusResponse:
        self.nodes.report(request)
        return nodes_pb2.ReportStatusResponse()

    @unary
    def PushConsole(
        self, request: nodes_pb2.PushConsoleRequest, context: grpc.ServicerContext
    ) -> nodes_pb2.PushConsoleResponse:
        return nodes_pb2.PushConsoleResponse(next_offset=self.nodes.core.push_console(request))

    @stream
    def FetchBlob(
        self, request: nodes_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[nodes_pb2.BlobData]:
        repo = self.catalog.blobs
        total = repo.size(request.digest) if repo.has(request.digest) else 0
        for chunk in repo.read(request.digest, request.offset):
            yield nodes_pb2.BlobData(data=chunk, total_size=total)


class TrustServicer(trust_pb2_grpc.TrustServicer):
    """Image signatures (publishers) and the site's trust policy (admins)."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self.default_owner = trust.core.cfg.default_owner

    @unary
    def AddSignature(
        self, request: trust_pb2.AddSignatureRequest, context: grpc.ServicerContext
    ) -> trust_pb2.ImageSignatures:
        owner = caller(context, self.default_owner)
        return self.trust.add_signature(owner, request.image, request.envelope_json)

    @unary
    def GetSignatures(
        self, request: trust_pb2.ImageSignaturesRequest, context: grpc.ServicerContext
    ) -> trust_pb2.ImageSignatures:
        return self.trust.signatures(request.image)

    @unary
    def GetPolicy(
        self, request: trust_pb2.GetPolicyRequest, context: grpc.ServicerContext
    ) -> trust_pb2.TrustPolicy:
        return self.trust.policy_proto()

    @unary
    def AddKey(
        self, request: trust_pb2.AddKeyRequest, context: grpc.ServicerContext
    ) -> trust_pb2.TrustPolicy:
        return self.trust.add_key(request)

    @unary
    def RevokeKey(
        self, request: trust_pb2.RevokeKeyRequest, context: grpc.ServicerContext
    ) -> trust_pb2.TrustPolicy:
        return self.trust.revoke_key(request.key_id)

    @unary
    def RevokeDigest(
        self, request: trust_pb2.RevokeDigestRequest, context: grpc.ServicerContext
    ) -> trust_pb2.TrustPolicy:
        return self.trust.revoke_digest(request.digest)

    @unary
    def SetMode(
        self, request: trust_pb2.SetModeRequest, context: grpc.ServicerContext
    ) -> trust_pb2.TrustPolicy:
        return self.trust.set_mode(request)

    @unary
    def ListAudit(
        self, request: trust_pb2.ListAuditRequest, context: grpc.ServicerContext
    ) -> trust_pb2.ListAuditResponse:
        entries = self.trust.list_audit(request.limit, request.image)
        return trust_pb2.ListAuditResponse(entries=entries)
