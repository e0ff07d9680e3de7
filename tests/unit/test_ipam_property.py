"""Property: concurrent creates and destroys never double-allocate or leak addresses."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import netaddr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from workspace import ipam
from workspace.config import ServiceConfig, load
from workspace.domain.states import Op
from workspace.edge.admin import AdminServicer
from workspace.edge.images import ImagesServicer as Catalog
from workspace.edge.nodes import NodesServicer as Nodes
from workspace.edge.workspaces import WorkspacesServicer as Core
from workspace.errors import ResourceExhausted
from workspace.node.v1 import nodes_pb2
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog as CatalogOps
from workspace.ops.unit import Env
from workspace.store import IpAllocation, Network, Node, Store, Workspace
from workspace.store.blobs import BlobRepository
from workspace.v1 import admin_pb2, common_pb2, images_pb2, workspaces_pb2

OWNER = "prop"
SUBNET = "10.20.0.0/26"  # gateway .1, range .2 - .62: 61 addresses
THREADS = 4
# SQLite fsyncs every commit (synchronous=FULL); a RAM-backed directory keeps this quick.
FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# One thread's work: "create", or ("destroy", k) = destroy the k-th (mod n) of its live ones.
# Creates outnumber destroys so that the pool runs dry in many examples.
op_st = st.one_of(
    st.just("create"),
    st.just("create"),
    st.just("create"),
    st.tuples(st.just("destroy"), st.integers(0, 1000)),
)
plan_st = st.lists(st.lists(op_st, max_size=20), min_size=THREADS, max_size=THREADS)


def build(tmp: Path) -> tuple[Core, Nodes]:
    cfg = load(ServiceConfig, None, data_dir=str(tmp))
    env = Env.of(cfg, Store(f"sqlite:///{tmp}/db.sqlite"), Notifier())
    core = Core(env)
    catalog = Catalog(CatalogOps(env, BlobRepository(tmp / "blobs")))
    AdminServicer(env).create_network(admin_pb2.Network(name="default", subnet=SUBNET))
    ref = catalog.upload_blob(iter([b"\0" * 512]), OWNER)
    part = common_pb2.Partition(
        name="root", digest=ref.digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
    )
    catalog.import_image(OWNER, images_pb2.ImportImageRequest(name="img", partitions=[part]))
    nodes = Nodes(env, catalog.catalog)
    nodes.register(
        nodes_pb2.RegisterRequest(
            node="n1", hypervisor="fake", cpus=64, memory_mib=1024 * 1024, networks=["default"]
        )
    )
    return core, nodes


def run_thread(core: Core, nodes: Nodes, tid: int, ops: list[object]) -> tuple[set[str], set[str]]:
    """Returns (ids it created, ids it destroyed)."""
    live: list[str] = []
    created: set[str] = set()
    destroyed: set[str] = set()
    for i, op in enumerate(ops):
        if op == "create":
            req = workspaces_pb2.CreateWorkspaceRequest(
                name=f"t{tid}-{i}", image="img", memory_mib=16, request_id=f"t{tid}-{i}"
            )
            try:
                ws = core.create(OWNER, req)
            except ResourceExhausted as exc:
                assert "no free address" in exc.message, exc.message
                continue
            live.append(ws.id)
            created.add(ws.id)
        elif live:
            assert isinstance(op, tuple)
            wid = live.pop(op[1] % len(live))
            core.operate(OWNER, wid, Op.DESTROY)
            nodes.report(
                nodes_pb2.ReportStatusRequest(
                    node="n1",
                    workspaces=[
                        nodes_pb2.ObservedWorkspace(
                            workspace_id=wid, state=nodes_pb2.OBSERVED_STATE_ABSENT
                        )
                    ],
                )
            )
            destroyed.add(wid)
    return created, destroyed


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(prefill=st.one_of(st.integers(0, 61), st.integers(50, 61)), plan=plan_st)
def test_concurrent_creates_and_destroys_keep_pool_consistent(
    prefill: int, plan: list[list[object]]
) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as d:
        core, nodes = build(Path(d))
        # Start from a partly used pool (the prefill belongs to thread 99, never destroyed).
        prior, _ = run_thread(core, nodes, 99, ["create"] * prefill)
        assert len(prior) == prefill
        with ThreadPoolExecutor(THREADS) as pool_exec:
            futures = [
                pool_exec.submit(run_thread, core, nodes, t, ops) for t, ops in enumerate(plan)
            ]
            results = [f.result() for f in futures]
        created = prior.union(*(c for c, _ in results))
        destroyed = set().union(*(x for _, x in results))

        with core.env.store.read() as s:
            net = s.get(Network, "default")
            assert net is not None
            pool = ipam.Pool(net.subnet, net.gateway, net.range_start, net.range_end, "")
            allocs = list(s.execute(select(IpAllocation)).scalars())
            rows = {w.id: w for w in s.execute(select(Workspace)).scalars()}
            node = s.get(Node, "n1")
            assert node is not None
            used = (node.used_cpus, node.used_memory_mib)
        core.env.store.close()

    # No address and no MAC handed out twice.
    assert not [ip for ip, n in Counter(a.ip for a in allocs).items() if n > 1]
    assert not [mac for mac, n in Counter(a.mac for a in allocs).items() if n > 1]
    # Every address is a host of the range and not the gateway.
    first, last = netaddr.IPAddress(pool.range_start), netaddr.IPAddress(pool.range_end)
    for a in allocs:
        assert first <= netaddr.IPAddress(a.ip) <= last
        assert a.ip != pool.gateway

    # Only successful creates left rows; the outcomes are what each thread saw.
    assert set(rows) == created
    live = {wid for wid, w in rows.items() if w.state != "TERMINATED"}
    assert live == created - destroyed
    per_ws = Counter(a.workspace_id for a in allocs)
    for wid in live:
        assert per_ws[wid] == 1, f"live workspace {wid} has {per_ws[wid]} allocations"
    for wid in destroyed:
        assert per_ws[wid] == 0, f"terminated workspace {wid} still holds an address"
    free = ipam.pool_size(pool) - len(allocs)
    assert free == ipam.pool_size(pool) - len(live)
    assert free >= 0

    # The node's claim is exactly what the live workspaces claimed.
    assert used == (
        sum(rows[w].claimed_cpus for w in live),
        sum(rows[w].claimed_memory_mib for w in live),
    )
