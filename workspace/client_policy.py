"""The network-policy half of the Python client (``Client`` inherits it): `ws update` of
a workspace's connectivity, allow rules and limits, and the ``Limits`` message a create
carries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from workspace.client_address import older_service
from workspace.client_args import strings
from workspace.v1 import common_pb2, workspaces_pb2, workspaces_pb2_grpc

T = TypeVar("T")

# The limits a request may set (0: the default): flags are --cpu-percent etc.
LIMIT_NAMES = ("cpu_percent", "cpu_weight", "disk_mbps", "disk_iops", "net_mbps")


def limits_message(limits: Mapping[str, int] | None) -> common_pb2.Limits:
    """``{"net_mbps": 50}`` → a Limits message (unknown names are a TypeError)."""
    given = dict(limits or {})
    unknown = sorted(set(given) - set(LIMIT_NAMES))
    if unknown:
        raise TypeError(f"unknown limit(s) {', '.join(unknown)}; use {', '.join(LIMIT_NAMES)}")
    return common_pb2.Limits(**{k: int(v) for k, v in given.items()})


class PolicyClientMixin:
    """Needs ``_call``, ``_workspaces`` and ``address`` from the Client."""

    _workspaces: workspaces_pb2_grpc.WorkspacesStub
    address: str

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def update_workspace(
        self,
        id: str,
        connectivity: str = "",
        allow: Sequence[str] | None = None,
        limits: Mapping[str, int] | None = None,
        reset_limits: Sequence[str] = (),
        cpus: int = 0,
        memory_mib: int = 0,
    ) -> common_pb2.Workspace:
        """Change a live workspace (yours, or any as an admin): ``connectivity`` ("" =
        unchanged), ``allow`` (None = unchanged; a list, even empty, replaces the rules)
        and ``limits`` (each non-zero one replaces the workspace's); ``reset_limits``
        names limits put back to their default; ``cpus`` and ``memory_mib`` (0 =
        unchanged) resize a STOPPED one on its node. The node follows."""
        req = workspaces_pb2.UpdateWorkspaceRequest(
            id=id,
            connectivity=connectivity,
            set_allow=allow is not None,
            allow=strings(allow or (), "allow"),
            limits=limits_message(limits),
            reset_limits=strings(reset_limits, "reset_limits"),
            cpus=cpus,
            memory_mib=memory_mib,
        )
        ws: common_pb2.Workspace = self._call(self._workspaces.UpdateWorkspace, req)
        unsized = [
            f"{name} {got} (asked {asked})"
            for name, asked, got in (
                ("cpus", cpus, ws.cpus),
                ("memory_mib", memory_mib, ws.memory_mib),
            )
            if asked and asked != got
        ]
        if unsized:  # a service before resizing ignores the fields and answers OK
            raise older_service(
                self.address,
                f"did not resize {ws.name or id}, still {', '.join(unsized)}",
                "The rest of the update, if any, was made",
            )
        return ws
