"""The Projects API: projects and members (admins), quotas (every user's own)."""

from __future__ import annotations

import grpc

from workspace.codec import projects as codec
from workspace.codec.v1 import limits_from_proto
from workspace.edge import auth
from workspace.edge.calls import unary
from workspace.identity import Identity
from workspace.ops import projects
from workspace.ops.images import Catalog
from workspace.v1 import projects_pb2, projects_pb2_grpc


class ProjectsServicer(projects_pb2_grpc.ProjectsServicer):
    SERVICE = "workspace.v1.Projects"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.env = catalog.env
        self.auth = auth.for_config(self.env.cfg)

    @unary
    def CreateProject(
        self, request: projects_pb2.Project, context: grpc.ServicerContext, who: Identity
    ) -> projects_pb2.Project:
        spec = projects.create_project(self.env, codec.project_from_proto(request))
        return codec.project_to_proto(spec)

    @unary
    def AddProjectUser(
        self, request: projects_pb2.ProjectUserRequest, context: grpc.ServicerContext, who: Identity
    ) -> projects_pb2.Project:
        spec = projects.add_user(self.env, request.project, request.user)
        return codec.project_to_proto(spec)

    @unary
    def ListProjects(
        self,
        request: projects_pb2.ListProjectsRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> projects_pb2.ListProjectsResponse:
        listed = [codec.project_to_proto(p) for p in projects.list_projects(self.env)]
        return projects_pb2.ListProjectsResponse(projects=listed)

    @unary
    def SetProjectDefaults(
        self,
        request: projects_pb2.SetProjectDefaultsRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> projects_pb2.Project:
        # default_limits left out of a request that sets another of the settings keep
        # theirs: a program changing a quota (grpcurl -d '{"project": "p", "quota": ...}')
        # cleared the project's default limits. Alone, as first defined, it sets them.
        others = any(request.HasField(f) for f in ("quota", "preemptible_quota", "leases"))
        keep = request.keep_default_limits or (others and not request.HasField("default_limits"))
        limits = None if keep else limits_from_proto(request.default_limits)
        preemptible = (
            codec.quota_from_proto(request.preemptible_quota)
            if request.HasField("preemptible_quota")
            else None
        )
        quota = codec.quota_from_proto(request.quota) if request.HasField("quota") else None
        leases = (
            (
                request.leases.default_lease_s,
                request.leases.max_lease_s,
                codec.lease_action_from_proto(request.leases.on_expiry),
            )
            if request.HasField("leases")
            else None
        )
        spec = projects.set_defaults(
            self.env, request.project, limits, preemptible, quota=quota, leases=leases
        )
        return codec.project_to_proto(spec)

    @unary
    def RemoveProjectUser(
        self, request: projects_pb2.ProjectUserRequest, context: grpc.ServicerContext, who: Identity
    ) -> projects_pb2.Project:
        spec = projects.remove_user(self.env, request.project, request.user)
        return codec.project_to_proto(spec)

    @unary
    def GetQuota(
        self, request: projects_pb2.GetQuotaRequest, context: grpc.ServicerContext, who: Identity
    ) -> projects_pb2.GetQuotaResponse:
        uses = [codec.use_to_proto(u) for u in self.catalog.quotas(who, request.project)]
        return projects_pb2.GetQuotaResponse(projects=uses)

    @unary
    def DeleteProject(
        self,
        request: projects_pb2.DeleteProjectRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> projects_pb2.Project:
        return codec.project_to_proto(projects.delete_project(self.env, request.name))
