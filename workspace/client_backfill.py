"""The backfill half of the Python client (``Client`` inherits it): `ws-admin backfill`
(admins; docs/design/backfill.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from workspace.client_args import strings
from workspace.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")


class BackfillClientMixin:
    """Needs ``_call`` and ``_admin`` from the Client."""

    _admin: admin_pb2_grpc.AdminStub

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def set_backfill(
        self,
        image: str,
        max_count: int,
        cpus: int = 0,
        memory_mib: int = 0,
        networks: Sequence[str] = (),
        grace_s: int = 0,
        project: str = "",
    ) -> admin_pb2.BackfillEntry:
        """(admins) Keep up to ``max_count`` preemptible workspaces of ``image`` on idle
        capacity (cpus/memory 0: the create defaults); replaces the image's entry."""
        req = admin_pb2.BackfillEntry(
            image=image,
            max=max_count,
            cpus=cpus,
            memory_mib=memory_mib,
            networks=strings(networks, "networks"),
            grace_s=grace_s,
            project=project,
        )
        return self._call(self._admin.SetBackfill, req)

    def list_backfill(self) -> list[admin_pb2.BackfillEntry]:
        """(admins) Every entry, with how many of its workspaces live and run now."""
        resp = self._call(self._admin.ListBackfill, admin_pb2.ListBackfillRequest())
        return list(resp.entries)

    def clear_backfill(self, image: str) -> admin_pb2.BackfillEntry:
        """(admins) Remove the entry; its workspaces are destroyed (``live``: how many)."""
        return self._call(self._admin.ClearBackfill, admin_pb2.ClearBackfillRequest(image=image))
