"""The service as ws-slurm calls it: a call not answered in time is the service away."""

from __future__ import annotations

from typing import Any, Protocol

from workspace import errors
from workspace.v1 import clusters_pb2, common_pb2


class Service(Protocol):
    """The part of ``workspace.client.Client`` ws-slurm uses (tests pass a fake)."""

    def list_workspaces(
        self, include_terminated: bool = ..., *, mine: bool = ...
    ) -> list[common_pb2.Workspace]: ...

    def create_workspace(self, image: str, **kw: Any) -> common_pb2.Workspace: ...

    def create_cluster(
        self, request: clusters_pb2.CreateClusterRequest, /
    ) -> clusters_pb2.Cluster: ...

    def destroy_workspace(self, id: str) -> common_pb2.Workspace: ...

    def get_workspace(self, id: str) -> common_pb2.Workspace: ...


NO_ANSWER = "DEADLINE_EXCEEDED"


class Answering:
    """The service as ws-slurm calls it: a call it did not answer within ``timeout_s``
    (DEADLINE_EXCEEDED: a hung or overloaded service) is the service being away
    (``errors.Unavailable``: exit 3, "service unreachable" in Slurm, the nodes not tried
    yet not each given another timeout), not a refusal of ws-slurm or of a create."""

    def __init__(self, client: Service, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    def _away(self, exc: errors.WorkspaceError) -> errors.WorkspaceError:
        # The client raises a timed-out call as Unavailable coded DEADLINE_EXCEEDED ("the
        # workspace service at ADDR did not answer in time"): said with ws-slurm's own
        # ``timeout_s``, which is what an admin can change.
        if exc.code != NO_ANSWER:
            return exc
        address = getattr(self.client, "address", "")
        return errors.Unavailable(
            f"it did not answer within {self.timeout_s:g} s" + (f" at {address}" if address else "")
        )

    def list_workspaces(
        self, include_terminated: bool = False, *, mine: bool = True
    ) -> list[common_pb2.Workspace]:
        try:
            return self.client.list_workspaces(include_terminated=include_terminated, mine=mine)
        except errors.WorkspaceError as exc:
            raise self._away(exc) from None

    def create_workspace(self, image: str, **kw: Any) -> common_pb2.Workspace:
        try:
            return self.client.create_workspace(image, **kw)
        except errors.WorkspaceError as exc:
            raise self._away(exc) from None

    def create_cluster(self, request: clusters_pb2.CreateClusterRequest, /) -> clusters_pb2.Cluster:
        try:
            return self.client.create_cluster(request)
        except errors.WorkspaceError as exc:
            raise self._away(exc) from None

    def destroy_workspace(self, id: str) -> common_pb2.Workspace:
        try:
            return self.client.destroy_workspace(id)
        except errors.WorkspaceError as exc:
            raise self._away(exc) from None

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        try:
            return self.client.get_workspace(id)
        except errors.WorkspaceError as exc:
            raise self._away(exc) from None
