"""The service's operations over one store URL, without gRPC: the store contract's harness.

``World(tmp, url)`` is one service process's worth of operations (its own ``Store``:
engine, pool, in-process write lock) on a database; ``world.replica()`` is another
process's worth on the same database (PostgreSQL only: what several service replicas
are). The servicers' plain methods are called, as tests/unit/test_ipam_property.py does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from workspace.config import ServiceConfig, load
from workspace.edge.admin import AdminServicer
from workspace.edge.clusters import ClustersServicer
from workspace.edge.images import ImagesServicer
from workspace.edge.nodes import NodesServicer
from workspace.edge.workspaces import WorkspacesServicer
from workspace.node.v1 import nodes_pb2
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog
from workspace.ops.unit import Env
from workspace.store import IpAllocation, Node, Store, Workspace
from workspace.store.blobs import BlobRepository
from workspace.v1 import admin_pb2, common_pb2, images_pb2, workspaces_pb2

OWNER = "alice"


class World:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        tmp.mkdir(parents=True, exist_ok=True)
        cfg = load(ServiceConfig, None, data_dir=str(tmp))
        self.store = Store(url)
        self.env = Env.of(cfg, self.store, Notifier())
        self.core = WorkspacesServicer(self.env)
        self.images = ImagesServicer(Catalog(self.env, BlobRepository(tmp / "blobs")))
        self.nodes = NodesServicer(self.env, self.images.catalog)
        self.admin = AdminServicer(self.env)
        self.clusters = ClustersServicer(self.env)

    def replica(self, name: str) -> World:
        return World(self.tmp / name, self.url)

    def close(self) -> None:
        self.store.close()

    # -- set-up -------------------------------------------------------------------------------

    def network(self, subnet: str, name: str = "default") -> None:
        self.admin.create_network(admin_pb2.Network(name=name, subnet=subnet))

    def image(self, name: str = "img") -> None:
        ref = self.images.upload_blob(iter([b"\0" * 512]), OWNER)
        part = common_pb2.Partition(
            name="root", digest=ref.digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
        )
        self.images.import_image(OWNER, images_pb2.ImportImageRequest(name=name, partitions=[part]))

    def node(self, name: str, cpus: int, memory_mib: int, networks: tuple[str, ...]) -> None:
        self.nodes.register(
            nodes_pb2.RegisterRequest(
                node=name,
                hypervisor="fake",
                cpus=cpus,
                memory_mib=memory_mib,
                networks=list(networks),
            )
        )

    # -- operations ---------------------------------------------------------------------------

    def create(self, name: str, request_id: str = "", **kw: object) -> common_pb2.Workspace:
        kw.setdefault("image", "img")
        req = workspaces_pb2.CreateWorkspaceRequest(
            name=name,
            request_id=request_id or name,
            **kw,  # type: ignore[arg-type]
        )
        return self.core.create(OWNER, req)

    def absent(self, node: str, *wids: str) -> None:
        """``node`` reports the workspaces gone (what its agent does after a destroy)."""
        self.nodes.report(
            nodes_pb2.ReportStatusRequest(
                node=node,
                workspaces=[
                    nodes_pb2.ObservedWorkspace(
                        workspace_id=w, state=nodes_pb2.OBSERVED_STATE_ABSENT
                    )
                    for w in wids
                ],
            )
        )

    # -- what the store holds -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.store.read() as s:
            return Snapshot(
                workspaces={w.id: w for w in s.execute(select(Workspace)).scalars()},
                allocations=list(s.execute(select(IpAllocation)).scalars()),
                nodes={n.name: n for n in s.execute(select(Node)).scalars()},
            )


@dataclass
class Snapshot:
    workspaces: dict[str, Workspace]
    allocations: list[IpAllocation]
    nodes: dict[str, Node]

    def live(self) -> dict[str, Workspace]:
        return {k: w for k, w in self.workspaces.items() if w.state != "TERMINATED"}

    def check(self) -> None:
        """The invariants of placement: no address or MAC twice, every placed live
        workspace holds one address per network and nothing else does, each node's claim
        is the sum of its live workspaces' claims and within its capacity."""
        dup_ip = [
            k for k, n in Counter((a.network, a.ip) for a in self.allocations).items() if n > 1
        ]
        assert not dup_ip, f"addresses handed out twice: {dup_ip}"
        dup_mac = [k for k, n in Counter(a.mac for a in self.allocations).items() if n > 1]
        assert not dup_mac, f"MACs handed out twice: {dup_mac}"
        per_ws = Counter(a.workspace_id for a in self.allocations)
        live = self.live()
        for wid, w in self.workspaces.items():
            want = len(w.networks or ()) if wid in live and w.node else 0
            assert per_ws[wid] == want, f"{wid} ({w.state}) holds {per_ws[wid]} addresses"
        for a in self.allocations:
            assert a.ip_int == int.from_bytes(bytes(int(x) for x in a.ip.split(".")), "big")
        for name, node in self.nodes.items():
            on = [w for w in live.values() if w.node == name]
            claimed = (sum(w.claimed_cpus for w in on), sum(w.claimed_memory_mib for w in on))
            assert (node.used_cpus, node.used_memory_mib) == claimed, name
            assert node.used_memory_mib <= node.memory_mib, f"{name} is over its memory"
