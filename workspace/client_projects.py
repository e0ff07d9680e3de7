"""The projects half of the Python client (``Client`` inherits it): projects, members and
quotas (admins), the caller's quota, and making images public (admins)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from workspace.client_address import older_service
from workspace.client_policy import limits_message
from workspace.v1 import images_pb2, images_pb2_grpc, projects_pb2, projects_pb2_grpc

T = TypeVar("T")

# Quota names as `ws-admin project create --quota` spells them -> Quota fields.
QUOTA_FIELDS = {
    "instances": "instances",
    "vcpus": "vcpus",
    "memory-mib": "memory_mib",
    "disk-gib": "disk_gib",
    "image-bytes": "image_bytes",
    # The preemptible class, counted apart (its workspaces count only against these).
    "preemptible-instances": "preemptible_instances",
    "preemptible-vcpus": "preemptible_vcpus",
    "preemptible-memory-mib": "preemptible_memory_mib",
    "preemptible-disk-gib": "preemptible_disk_gib",
}
PREEMPTIBLE_QUOTAS = (
    "preemptible-instances",
    "preemptible-vcpus",
    "preemptible-memory-mib",
    "preemptible-disk-gib",
)
LEASE_ACTIONS = {
    "stop": projects_pb2.LEASE_ACTION_STOP,
    "destroy": projects_pb2.LEASE_ACTION_DESTROY,
}


def lease_action(on_expiry: str) -> projects_pb2.LeaseAction.ValueType:
    """``"stop"`` or ``"destroy"`` -> the LeaseAction (another word: ValueError, so the
    client's BadArgument, where a KeyError no ``WorkspaceError`` caught came out)."""
    if on_expiry not in LEASE_ACTIONS:
        raise ValueError(f"on_expiry must be one of {', '.join(LEASE_ACTIONS)}, not {on_expiry!r}")
    return LEASE_ACTIONS[on_expiry]


def quota_fields(quota: Mapping[str, int] | None) -> dict[str, int]:
    """Quotas by QUOTA_FIELDS name (``memory-mib``) or Quota field (``memory_mib``) ->
    by Quota field; another name is a ValueError naming those there are."""
    fields = set(QUOTA_FIELDS.values())
    out: dict[str, int] = {}
    unknown = []
    for name, value in (quota or {}).items():
        field = QUOTA_FIELDS.get(name, name)
        if field in fields:
            out[field] = value
        else:
            unknown.append(str(name))
    if unknown:
        raise ValueError(
            f"not a quota: {', '.join(sorted(unknown))}; the quotas are {', '.join(QUOTA_FIELDS)}"
        )
    return out


class ProjectsClientMixin:
    """Needs ``_call``, ``_projects``, ``_images`` and ``address`` from the Client."""

    _projects: projects_pb2_grpc.ProjectsStub
    _images: images_pb2_grpc.ImagesStub
    address: str

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def create_project(
        self,
        name: str,
        quota: Mapping[str, int] | None = None,
        default_lease_s: int = 0,
        max_lease_s: int = 0,
        on_expiry: str = "stop",
        default_limits: Mapping[str, int] | None = None,
    ) -> projects_pb2.Project:
        """(admins) A new project; ``quota`` keys as QUOTA_FIELDS names them ("memory-mib",
        or the Quota field "memory_mib"; 0 = no limit); ``on_expiry`` "stop" or "destroy";
        ``default_limits`` ({"net_mbps": 50, ...}) for its workspaces that ask for none."""
        fields = quota_fields(quota)
        req = projects_pb2.Project(
            name=name,
            quota=projects_pb2.Quota(**fields),
            default_lease_s=default_lease_s,
            max_lease_s=max_lease_s,
            on_expiry=lease_action(on_expiry),
            default_limits=limits_message(default_limits),
        )
        return self._quota_set(self._call(self._projects.CreateProject, req), fields)

    def set_project_defaults(
        self, project: str, default_limits: Mapping[str, int]
    ) -> projects_pb2.Project:
        """(admins) The project's default limits become exactly ``default_limits``."""
        req = projects_pb2.SetProjectDefaultsRequest(
            project=project, default_limits=limits_message(default_limits)
        )
        return self._call(self._projects.SetProjectDefaults, req)

    def set_project(
        self,
        project: str,
        *,
        default_limits: Mapping[str, int] | None = None,
        quota: Mapping[str, int] | None = None,
        leases: tuple[int, int, str] | None = None,
    ) -> projects_pb2.Project:
        """(admins) Change what is given of a project's settings; what is None stays.
        ``default_limits`` become exactly these; ``quota`` (QUOTA_FIELDS names, or Quota
        fields, as for ``create_project``) replaces
        the quotas of each class it names a quota of (the normal class's, the
        preemptible class's; a quota of that class left out: 0 = no limit); ``leases``
        (default s, maximum s, "stop" or "destroy" at expiry) replaces the lease policy.
        A lower quota refuses new workspaces; those running stay."""
        asked = quota_fields(quota)
        req = projects_pb2.SetProjectDefaultsRequest(
            project=project,
            default_limits=limits_message(default_limits or {}),
            keep_default_limits=default_limits is None,
        )
        for field, names in (
            (req.quota, [n for n in QUOTA_FIELDS if n not in PREEMPTIBLE_QUOTAS]),
            (req.preemptible_quota, list(PREEMPTIBLE_QUOTAS)),
        ):
            given = {
                QUOTA_FIELDS[n]: asked[QUOTA_FIELDS[n]] for n in names if QUOTA_FIELDS[n] in asked
            }
            if given:
                field.CopyFrom(projects_pb2.Quota(**given))
        if leases is not None:
            req.leases.CopyFrom(
                projects_pb2.LeasePolicy(
                    default_lease_s=leases[0],
                    max_lease_s=leases[1],
                    on_expiry=lease_action(leases[2]),
                )
            )
        got = self._call(self._projects.SetProjectDefaults, req)
        return self._quota_set(got, asked)

    def _quota_set(
        self, project: projects_pb2.Project, asked: Mapping[str, int]
    ) -> projects_pb2.Project:
        """``project`` as the service answered, if its quotas are the ``asked`` ones (Quota
        field names): a service older than a quota does not read it and answers OK."""
        unset = [
            f"{field} {asked[field]} (it has {getattr(project.quota, field)})"
            for field in asked
            if getattr(project.quota, field) != asked[field]
        ]
        if unset:
            raise older_service(
                self.address,
                f"did not set project {project.name}'s quota {', '.join(unset)}",
                "The rest, if any, was made",
            )
        return project

    def add_project_user(self, project: str, user: str) -> projects_pb2.Project:
        req = projects_pb2.ProjectUserRequest(project=project, user=user)
        return self._call(self._projects.AddProjectUser, req)

    def remove_project_user(self, project: str, user: str) -> projects_pb2.Project:
        """(admins) Take ``user`` out of ``project``'s recorded members."""
        req = projects_pb2.ProjectUserRequest(project=project, user=user)
        return self._call(self._projects.RemoveProjectUser, req)

    def delete_project(self, name: str) -> projects_pb2.Project:
        """(admins) Forget a project nothing live belongs to; returns it as it was."""
        return self._call(
            self._projects.DeleteProject, projects_pb2.DeleteProjectRequest(name=name)
        )

    def list_projects(self) -> list[projects_pb2.Project]:
        resp = self._call(self._projects.ListProjects, projects_pb2.ListProjectsRequest())
        return list(resp.projects)

    def quota(self, project: str = "") -> list[projects_pb2.ProjectQuota]:
        """The caller's projects (or only ``project``: a member's, any for an admin): each
        one's limits and what it uses, the preemptible class apart."""
        req = projects_pb2.GetQuotaRequest(project=project)
        return list(self._call(self._projects.GetQuota, req).projects)

    def set_image_public(self, name: str, public: bool = True) -> images_pb2.Image:
        req = images_pb2.SetImagePublicRequest(name=name, public=public)
        return self._call(self._images.SetImagePublic, req)
