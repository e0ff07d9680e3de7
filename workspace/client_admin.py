"""The site-admin half of the Python client (``Client`` inherits it): nodes, their caches,
networks, the capacity queue, the service's replicas and the scheduler's input (admins;
what ``ws-admin`` calls)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from workspace import errors
from workspace.client_args import strings
from workspace.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")


class AdminClientMixin:
    """Needs ``_call`` and ``_admin`` from the Client."""

    _admin: admin_pb2_grpc.AdminStub

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def list_nodes(self) -> list[admin_pb2.Node]:
        return list(self._call(self._admin.ListNodes, admin_pb2.ListNodesRequest()).nodes)

    def get_node(self, name: str) -> admin_pb2.Node:
        """Node ``name`` as ``list_nodes`` shows it (NotFound if the site has none)."""
        for node in self.list_nodes():
            if node.name == name:
                return node
        raise errors.NotFound(f"no node {name!r}; `ws-admin node list` shows them")

    def list_cache(self, node: str) -> admin_pb2.ListCacheResponse:
        return self._call(self._admin.ListCache, admin_pb2.NodeRef(name=node))

    def preload_image(self, image: str, nodes: list[str]) -> admin_pb2.PreloadImageResponse:
        req = admin_pb2.PreloadImageRequest(image=image, nodes=strings(nodes, "nodes"))
        return self._call(self._admin.PreloadImage, req)

    def create_network(
        self,
        name: str,
        subnet: str,
        gateway: str = "",
        range_start: str = "",
        range_end: str = "",
        bridge: str = "",
        mac_prefix: str = "",
        dns: Sequence[str] = (),
        vlan: int = 0,
    ) -> admin_pb2.Network:
        net = admin_pb2.Network(
            vlan=vlan,
            name=name,
            subnet=subnet,
            gateway=gateway,
            range_start=range_start,
            range_end=range_end,
            bridge=bridge,
            mac_prefix=mac_prefix,
            dns=strings(dns, "dns"),
        )
        return self._call(self._admin.CreateNetwork, net)

    def list_networks(self) -> list[admin_pb2.Network]:
        resp = self._call(self._admin.ListNetworks, admin_pb2.ListNetworksRequest())
        return list(resp.networks)

    def delete_network(self, name: str) -> admin_pb2.Network:
        """Remove network ``name``; refused while a workspace, cluster or backfill entry
        uses it."""
        return self._call(self._admin.DeleteNetwork, admin_pb2.NetworkRef(name=name))

    def update_network(
        self,
        name: str,
        dns: Sequence[str] | None = None,
        addresses: tuple[str, str] | None = None,
    ) -> admin_pb2.Network:
        """Change network ``name``: its DNS servers (an empty list: none) and the range
        its addresses are allocated from (first, last; "" for a default); None leaves
        one as it is."""
        req = admin_pb2.UpdateNetworkRequest(name=name)
        if dns is not None:
            req.set_dns = True
            req.dns.extend(strings(dns, "dns"))
        if addresses is not None:
            req.set_range = True
            req.range_start, req.range_end = addresses
        return self._call(self._admin.UpdateNetwork, req)

    def drain_node(self, name: str) -> admin_pb2.Node:
        """Give node ``name`` no new work; what runs there keeps running."""
        return self._call(self._admin.DrainNode, admin_pb2.NodeRef(name=name))

    def enable_node(self, name: str) -> admin_pb2.Node:
        """Undo drain_node."""
        return self._call(self._admin.EnableNode, admin_pb2.NodeRef(name=name))

    def remove_node(self, name: str) -> admin_pb2.Node:
        """Forget node ``name``; refused while it holds live workspaces."""
        return self._call(self._admin.RemoveNode, admin_pb2.NodeRef(name=name))

    def list_queue(self) -> list[admin_pb2.QueueEntry]:
        """Requests waiting for capacity, first in line first."""
        return list(self._call(self._admin.ListQueue, admin_pb2.ListQueueRequest()).entries)

    def list_replicas(self) -> list[admin_pb2.Replica]:
        """(admins) The service replicas alive now, the one answering first; on SQLite
        the one process. ``leader``: the one running the background loops."""
        resp = self._call(self._admin.ListReplicas, admin_pb2.ListReplicasRequest())
        return list(resp.replicas)

    def get_scheduler_input(
        self,
        cpus: int = 0,
        memory_mib: int = 0,
        networks: Sequence[str] = (),
        image: str = "",
        requirements: Mapping[str, str] | None = None,
        preemptible: bool = False,
    ) -> str:
        """The scheduler's input for such a request, as JSON text (for offline replay);
        ``preemptible``: of the preemptible class."""
        req = admin_pb2.SchedulerInputRequest(
            cpus=cpus,
            memory_mib=memory_mib,
            networks=strings(networks, "networks"),
            image=image,
            requirements=dict(requirements or {}),
            preemptible=preemptible,
        )
        return self._call(self._admin.GetSchedulerInput, req).json
