"""The Workspaces API: decode with the codec, call an operation, encode the answer.

The plain methods (``create``, ``get``, ...) speak messages without a gRPC context (the
caller is given: an Identity, or a user name); the RPC methods get the caller's identity
and the error mapping from ``calls.unary``/``stream`` (edge/auth.py says who may call).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence

import grpc

from workspace.codec import events as codec_events
from workspace.codec import v1
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Op
from workspace.edge import auth
from workspace.edge.calls import STREAM_POLL_S, stopping, stream, unary
from workspace.edge.event_stream import events_out
from workspace.errors import InvalidArgument, NotFound, ResourceExhausted
from workspace.identity import Identity
from workspace.ops import (
    consoles,
    create,
    leases,
    operate,
    projects,
    queries,
    site_events,
    update,
    usage,
)
from workspace.ops.unit import Env
from workspace.v1 import admin_pb2, common_pb2, usage_pb2, workspaces_pb2, workspaces_pb2_grpc


class WorkspacesServicer(workspaces_pb2_grpc.WorkspacesServicer):
    SERVICE = "workspace.v1.Workspaces"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.auth = auth.for_config(env.cfg)

    # -- messages in, messages out ---------------------------------------------------------

    def create(
        self, who: Identity | str, req: workspaces_pb2.CreateWorkspaceRequest
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(create.create(self.env, who, v1.create_from_proto(req)))

    def get(self, who: Identity | str, ref: str) -> common_pb2.Workspace:
        return v1.workspace_to_proto(queries.get(self.env, who, ref))

    def list(self, who: Identity | str, include_terminated: bool) -> list[common_pb2.Workspace]:
        return [
            v1.workspace_to_proto(w) for w in queries.list_all(self.env, who, include_terminated)
        ]

    def list_page(
        self,
        who: Identity | str,
        include_terminated: bool,
        page_size: int = 0,
        page_token: str = "",
        all_users: bool = False,
        mine: bool = False,
    ) -> tuple[Sequence[common_pb2.Workspace], str]:
        rows, token = queries.list_page(
            self.env, who, include_terminated, page_size, page_token, all_users, mine
        )
        return [v1.workspace_to_proto(w) for w in rows], token

    def operate(
        self, who: Identity | str, ref: str, op: Op, timeout_s: int = 0, force: bool = False
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(operate.operate(self.env, who, ref, op, timeout_s, force))

    def console(self, who: Identity | str, ref: str, tail_bytes: int) -> bytes:
        return consoles.console(self.env, who, ref, tail_bytes)

    def extend_lease(
        self, who: Identity | str, req: workspaces_pb2.ExtendLeaseRequest
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(leases.extend(self.env, who, req.id, req.add_s))

    def update(
        self, who: Identity | str, req: workspaces_pb2.UpdateWorkspaceRequest
    ) -> common_pb2.Workspace:
        return v1.workspace_to_proto(update.update(self.env, who, v1.update_from_proto(req)))

    def usage(self, who: Identity | str, req: usage_pb2.GetUsageRequest) -> usage_pb2.UsageReport:
        """The caller's usage and their projects'."""
        since, until, by = v1.usage_query_from_proto(req)
        page = usage.Page(req.page_size, req.page_token)
        return v1.usage_report_to_proto(usage.report_for(self.env, who, since, until, by, page))

    # -- RPCs ------------------------------------------------------------------------------

    @unary
    def CreateWorkspace(
        self,
        request: workspaces_pb2.CreateWorkspaceRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> common_pb2.Workspace:
        return self.create(who, request)

    @unary
    def GetWorkspace(
        self,
        request: workspaces_pb2.GetWorkspaceRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> common_pb2.Workspace:
        return self.get(who, request.id)

    @unary
    def ListWorkspaces(
        self,
        request: workspaces_pb2.ListWorkspacesRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> workspaces_pb2.ListWorkspacesResponse:
        rows, token = self.list_page(
            who,
            request.include_terminated,
            request.page_size,
            request.page_token,
            request.all_users,
            request.mine,
        )
        return workspaces_pb2.ListWorkspacesResponse(
            workspaces=rows, next_page_token=token, mine=request.mine
        )

    @unary
    def WhoAmI(
        self, request: workspaces_pb2.WhoAmIRequest, context: grpc.ServicerContext, who: Identity
    ) -> workspaces_pb2.Caller:
        return v1.caller_to_proto(queries.caller(self.env, who))

    def _op(
        self, request: workspaces_pb2.WorkspaceRef, who: Identity, op: Op
    ) -> common_pb2.Workspace:
        return self.operate(who, request.id, op)

    @unary
    def StartWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext, who: Identity
    ) -> common_pb2.Workspace:
        return self._op(request, who, Op.START)

    @unary
    def StopWorkspace(
        self,
        request: workspaces_pb2.StopWorkspaceRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> common_pb2.Workspace:
        if request.timeout_s < 0:
            raise InvalidArgument("timeout_s must not be negative")
        return self.operate(who, request.id, Op.STOP, request.timeout_s, request.force)

    @unary
    def RebootWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext, who: Identity
    ) -> common_pb2.Workspace:
        return self._op(request, who, Op.REBOOT)

    @unary
    def PauseWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext, who: Identity
    ) -> common_pb2.Workspace:
        return self._op(request, who, Op.PAUSE)

    @unary
    def ResumeWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext, who: Identity
    ) -> common_pb2.Workspace:
        return self._op(request, who, Op.RESUME)

    @unary
    def DestroyWorkspace(
        self, request: workspaces_pb2.WorkspaceRef, context: grpc.ServicerContext, who: Identity
    ) -> common_pb2.Workspace:
        return self._op(request, who, Op.DESTROY)

    @stream
    def WatchWorkspaceEvents(
        self,
        request: workspaces_pb2.WatchWorkspaceEventsRequest,
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
            lambda gone: site_events.of_workspace(
                self.env, who, ref, since, follow, gone, kinds, after_id
            ),
        )

    @stream
    def WatchWorkspaces(
        self,
        request: workspaces_pb2.WatchWorkspacesRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> Iterator[workspaces_pb2.WorkspaceEvent]:
        notifier = self.env.notifier
        mine = request.mine  # only the caller's own, as ListWorkspaces' mine
        seen = projects.FollowedScope(self.env, who)
        target = ""
        if request.id:
            one = queries.get(self.env, who, request.id)
            if mine and not seen.last.owns(one.owner):
                raise NotFound(
                    f"workspace {request.id!r} is {one.owner}'s, not yours (the watch asked"
                    " for `mine`)"
                )
            target = one.id

        def accepts(ws: WorkspaceView) -> bool:
            if target:
                return ws.id == target
            if mine:
                return seen.last.owns(ws.owner)
            return seen.last.lists(ws.owner, ws.project, ws.created_at)

        def still_seen(ws: WorkspaceView) -> bool:
            """Whether the caller may see ``ws`` now (they may have left its project
            since the watch began); a watch of that one workspace ends NOT_FOUND."""
            if ws.owner == who.name or who.admin:
                return True
            if not target:
                return seen.current().lists(ws.owner, ws.project, ws.created_at)
            if not seen.current().sees(ws.owner, ws.project, ws.created_at):
                queries.get(self.env, who, target)  # NotFound, as a new watch of it
                return False
            return True

        shown = seen.last.projects  # the projects whose workspaces the watch has sent

        def joined() -> list[WorkspaceView]:
            """The workspaces of projects the caller was added to since the watch sent
            theirs (`ws-admin project add-user`): their events were not accepted before,
            so they are sent as they are now, as a new watch's snapshot has them."""
            nonlocal shown
            if target or mine:  # a project's workspaces joined are others'
                return []
            now = seen.current().projects
            added, shown = now - shown, now
            if not added:
                return []
            return [
                ws
                for ws in queries.list_all(self.env, who, request.include_terminated)
                if ws.project in added and ws.owner != who.name
            ]

        watcher = notifier.subscribe(accepts)
        # A client that cancels (or goes) ends the stream at once, not at its next poll.
        context.add_callback(lambda: notifier.end(watcher))
        try:
            if target:
                initial = [queries.get(self.env, who, target)]
            else:
                initial = queries.list_all(self.env, who, request.include_terminated, mine=mine)
            for ws in initial:
                yield workspaces_pb2.WorkspaceEvent(
                    workspace=v1.workspace_to_proto(ws), initial=True, mine=mine
                )
            while context.is_active() and not notifier.closed:
                self.auth.check_revoked(who)
                for ws in joined():
                    yield workspaces_pb2.WorkspaceEvent(
                        workspace=v1.workspace_to_proto(ws), mine=mine
                    )
                try:
                    ev = watcher.events.get(timeout=STREAM_POLL_S)
                except queue.Empty:
                    continue
                if ev is None:
                    break  # the service stops, or the client went
                if watcher.overflowed:
                    # Raised, not context.abort(): the stream's guard turns a
                    # WorkspaceError into its status, and grpc's abort exception into
                    # INTERNAL, which no client reopens.
                    raise ResourceExhausted("watch fell too far behind; re-open it")
                if still_seen(ev):
                    yield workspaces_pb2.WorkspaceEvent(
                        workspace=v1.workspace_to_proto(ev), mine=mine
                    )
            if notifier.closed and context.is_active():
                raise stopping()
        finally:
            notifier.unsubscribe(watcher)

    @unary
    def GetConsole(
        self,
        request: workspaces_pb2.GetConsoleRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> workspaces_pb2.ConsoleOutput:
        data = self.console(who, request.id, request.tail_bytes)
        return workspaces_pb2.ConsoleOutput(data=data)

    @unary
    def ExtendLease(
        self,
        request: workspaces_pb2.ExtendLeaseRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> common_pb2.Workspace:
        return self.extend_lease(who, request)

    @unary
    def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: grpc.ServicerContext, who: Identity
    ) -> usage_pb2.UsageReport:
        return self.usage(who, request)

    @unary
    def UpdateWorkspace(
        self,
        request: workspaces_pb2.UpdateWorkspaceRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> common_pb2.Workspace:
        return self.update(who, request)
