"""The Workspaces API: decode with the codec, call an operation, encode the answer.

The plain methods (``create``, ``get``, ...) speak messages without a gRPC context (the
caller is given); the RPC methods add the caller's identity and the error mapping.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence

import grpc

from workspace.codec import v1
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Op
from workspace.edge.calls import STREAM_POLL_S, caller, stream, unary
from workspace.errors import InvalidArgument
from workspace.ops import consoles, create, leases, operate, queries, usage
from workspace.ops.unit import Env
from workspace.v1 import common_pb2, usage_pb2, workspaces_pb2, workspaces_pb2_grpc


class WorkspacesServicer(workspaces_pb2_grpc.WorkspacesServicer):
    def __init__(self, env: Env) -> None:
        self.env = env
        self.default_owner = env.cfg.default_owner

    # -- messages in, messages out ---------------------------------------------------------

    def create(
        self, owner: str, req: workspaces_pb2.CreateWorkspaceRequest
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(create.create(self.env, owner, v1.create_from_proto(req)))

    def get(self, owner: str, ref: str) -> common_pb2.Workspace:
        return v1.workspace_to_proto(queries.get(self.env, owner, ref))

    def list(self, owner: str | None, include_terminated: bool) -> list[common_pb2.Workspace]:
        return [
            v1.workspace_to_proto(w) for w in queries.list_all(self.env, owner, include_terminated)
        ]

    def list_page(
        self, owner: str | None, include_terminated: bool, page_size: int = 0, page_token: str = ""
    ) -> tuple[Sequence[common_pb2.Workspace], str]:
        rows, token = queries.list_page(self.env, owner, include_terminated, page_size, page_token)
        return [v1.workspace_to_proto(w) for w in rows], token

    def operate(
        self, owner: str, ref: str, op: Op, timeout_s: int = 0, force: bool = False
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(operate.operate(self.env, owner, ref, op, timeout_s, force))

    def console(self, owner: str, ref: str, tail_bytes: int) -> bytes:
        return consoles.console(self.env, owner, ref, tail_bytes)

    def extend_lease(
        self, owner: str, req: workspaces_pb2.ExtendLeaseRequest
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(leases.extend(self.env, owner, req.id, req.add_s))

    def usage(self, owner: str, req: usage_pb2.GetUsageRequest) -> usage_pb2.UsageReport:
        since, until, by = v1.usage_query_from_proto(req)
        return v1.usage_report_to_proto(usage.report(self.env, owner, since, until, by))

    # -- RPCs ------------------------------------------------------------------------------

    def _owner(self, context: grpc.ServicerContext) -> str:
        return caller(context, self.default_owner)

    @unary
    def CreateWorkspace(
        self, request: workspaces_pb2.CreateWorkspaceRequest, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self.create(self._owner(context), request)

    @unary
    def GetWorkspace(
        self, request: workspaces_pb2.GetWorkspaceRequest, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self.get(self._owner(context), request.id)

    @unary
    def ListWorkspaces(
        self, request: workspaces_pb2.ListWorkspacesRequest, context: grpc.ServicerContext
    ) -> workspaces_pb2.ListWorkspacesResponse:
        rows, token = self.list_page(
            self._owner(context),
            request.include_terminated,
            request.page_size,
            request.page_token,
        )
        return workspaces_pb2.ListWorkspacesResponse(workspaces=rows, next_page_token=token)

    def _op(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext, op: Op
    ) -> common_pb2.Workspace:
        return self.operate(self._owner(context), request.id, op)

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
        return self.operate(
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
        notifier = self.env.notifier
        target = ""
        if request.id:
            target = queries.get(self.env, owner, request.id).id

        def accepts(ws: WorkspaceView) -> bool:
            return ws.owner == owner and (not target or ws.id == target)

        watcher = notifier.subscribe(accepts)
        try:
            if target:
                initial = [queries.get(self.env, owner, target)]
            else:
                initial = queries.list_all(self.env, owner, request.include_terminated)
            for ws in initial:
                yield workspaces_pb2.WorkspaceEvent(
                    workspace=v1.workspace_to_proto(ws), initial=True
                )
            while context.is_active() and not notifier.closed:
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
                yield workspaces_pb2.WorkspaceEvent(workspace=v1.workspace_to_proto(ev))
        finally:
            notifier.unsubscribe(watcher)

    @unary
    def GetConsole(
        self, request: workspaces_pb2.GetConsoleRequest, context: grpc.ServicerContext
    ) -> workspaces_pb2.ConsoleOutput:
        data = self.console(self._owner(context), request.id, request.tail_bytes)
        return workspaces_pb2.ConsoleOutput(data=data)

    @unary
    def ExtendLease(
        self, request: workspaces_pb2.ExtendLeaseRequest, context: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        return self.extend_lease(self._owner(context), request)

    @unary
    def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: grpc.ServicerContext
    ) -> usage_pb2.UsageReport:
        return self.usage(self._owner(context), request)
