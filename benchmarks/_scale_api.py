"""Service-level figures at site scale (used by benchmarks/scheduler.py).

The store is filled directly (bulk inserts: 1,000 nodes, 20,000 RUNNING workspaces with
their addresses and claims) before the service starts, since creating 20,000 workspaces
through the API would only measure durable commits. Then, against the running service:
Get latency, List latency for one page of 500 (list_p99_ms: what `ws list` asks per
round trip) and for all 20,000 in one response (list_all_p99_ms), single creates (each a
real placement over 1,000 nodes plus IP allocation, one durable commit), creates from 16
client threads at once (``api_create16_rps``, ``api_create16_p99_ms``: each acknowledged
after its durable commit), and the RSS. The store is SQLite, or a throwaway PostgreSQL
server (``database="postgresql"``: benchmarks/_common.py ``Database``).
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from pathlib import Path

import netaddr
from sqlalchemy import insert

from benchmarks._common import (
    Database,
    concurrent,
    create_as_clients_do,
    percentile,
    rss_mib,
    start_service,
    timed,
)
from tests.functional.harness import Stubs
from workspace import rpc
from workspace.store import Image, IpAllocation, Network, Node, Store, Workspace
from workspace.v1 import workspaces_pb2

SUBNET = "10.128.0.0/14"  # 262,142 addresses: room for every workspace (never configured)


def populate(db_url: str, n_nodes: int, n_workspaces: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    store = Store(db_url)
    now = time.time()
    net = netaddr.IPNetwork(SUBNET)
    digest = "sha256:" + "ab" * 32
    with store.write() as s:
        s.add(
            Network(
                name="default",
                subnet=SUBNET,
                gateway=str(net.network + 1),
                range_start=str(net.network + 2),
                range_end=str(net.broadcast - 1),
                bridge="wsbr0",
                mac_prefix="52:54:00",
                dns=[],
            )
        )
        s.add(
            Image(
                name="img",
                owner="local",
                partitions=[
                    {
                        "name": "root",
                        "digest": digest,
                        "size_bytes": 1 << 20,
                        "format": "raw",
                        "mode": "COW",
                    }
                ],
                kernel_digest="",
                initrd_digest="",
                cmdline="",
                created_at=now,
            )
        )
        nodes = [f"node{i:04d}" for i in range(n_nodes)]
        used = {n: [0, 0] for n in nodes}
        ws_rows, alloc_rows = [], []
        for i in range(n_workspaces):
            node = nodes[i % n_nodes]
            cpus, mem = rng.choice([(1, 512), (1, 1024), (2, 2048)])
            claim = mem + 64 + (mem * 2 + 1023) // 1024 + 8 * cpus
            used[node][0] += cpus
            used[node][1] += claim
            wid = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
            ws_rows.append(
                dict(
                    id=wid,
                    name=f"w{i}",
                    owner="local",
                    request_id=uuid.uuid4().hex,
                    request_hash="",
                    image="img",
                    image_spec={
                        "partitions": [
                            {
                                "name": "root",
                                "digest": digest,
                                "size_bytes": 1 << 20,
                                "format": "raw",
                                "mode": "COW",
                            }
                        ]
                    },
                    cpus=cpus,
                    memory_mib=mem,
                    claimed_cpus=cpus,
                    claimed_memory_mib=claim,
                    node=node,
                    state="RUNNING",
                    desired_state="RUNNING",
                    reason="",
                    reboot_count=0,
                    stop_timeout_s=60,
                    force_stop=False,
                    user_data=b"",
                    cluster="",
                    role="",
                    networks=["default"],
                    requirements={},
                    wait_deadline=0.0,
                    created_at=now + i * 1e-6,
                    updated_at=now,
                )
            )
            alloc_rows.append(
                dict(
                    network="default",
                    ip=str(net.network + 2 + i),
                    ip_int=int(net.network) + 2 + i,
                    mac="52:54:" + ":".join(f"{(i >> k) & 255:02x}" for k in (24, 16, 8, 0)),
                    workspace_id=wid,
                    nic_index=0,
                )
            )
        s.execute(
            insert(Node),
            [
                dict(
                    name=n,
                    hypervisor="kvm",
                    cpus=64,
                    memory_mib=256 * 1024,
                    disk_gib=2000,
                    used_cpus=used[n][0],
                    used_memory_mib=used[n][1],
                    state="READY",
                    drained=False,
                    last_heartbeat=now,
                    labels={},
                    networks=["default"],
                    cached_digests=[],
                )
                for n in nodes
            ],
        )
        s.execute(insert(Workspace), ws_rows)
        s.execute(insert(IpAllocation), alloc_rows)
    store.close()
    return [str(r["id"]) for r in ws_rows]


def api_figures(
    n_nodes: int,
    n_workspaces: int,
    seed: int,
    requests: int = 1000,
    lists: int = 10,
    creates: int = 200,
    database: str = "sqlite",
    clients: int = 16,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ws-scale-") as tmp:
        db = Database(database, Path(tmp))
        try:
            return measure(
                db, Path(tmp), n_nodes, n_workspaces, seed, requests, lists, creates, clients
            )
        finally:
            db.close()


def measure(
    db: Database,
    tmp: Path,
    n_nodes: int,
    n_workspaces: int,
    seed: int,
    requests: int,
    lists: int,
    creates: int,
    clients: int,
) -> dict[str, float]:
    t0 = time.perf_counter()
    ids = populate(db.url, n_nodes, n_workspaces, seed)
    fill_s = time.perf_counter() - t0
    proc, sock = start_service(tmp, db.config())
    try:
        stubs = Stubs(rpc.channel(sock))
        rng = random.Random(seed)
        get = timed(
            lambda: stubs.ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id=rng.choice(ids))),
            requests,
        )
        lreq = workspaces_pb2.ListWorkspacesRequest()
        count = len(stubs.ws.ListWorkspaces(lreq).workspaces)
        # What `ws list` does per round trip: one page of 500 (oldest first) ...
        preq = workspaces_pb2.ListWorkspacesRequest(page_size=500)
        page = timed(lambda: stubs.ws.ListWorkspaces(preq), requests // 10)
        # ... and everything in one response (page_size 0).
        lst = timed(lambda: stubs.ws.ListWorkspaces(lreq), lists)
        counter = iter(range(10**9))
        create = timed(
            lambda: create_as_clients_do(stubs, name=f"new{next(counter)}", memory_mib=512), creates
        )
        rate, lat = concurrent(
            lambda i: create_as_clients_do(stubs, name=f"par{i}", memory_mib=512),
            clients,
            creates // 4,
        )
        figures = {
            "api_nodes": float(n_nodes),
            "api_workspaces_listed": float(count),
            "store_fill_s": fill_s,
            "get_p50_ms": percentile(get, 50) * 1000,
            "get_p99_ms": percentile(get, 99) * 1000,
            "list_p50_ms": percentile(page, 50) * 1000,
            "list_p99_ms": percentile(page, 99) * 1000,
            "list_all_p50_ms": percentile(lst, 50) * 1000,
            "list_all_p99_ms": percentile(lst, 99) * 1000,
            "create_at_scale_p50_ms": percentile(create, 50) * 1000,
            "create_at_scale_p99_ms": percentile(create, 99) * 1000,
            "api_creates_per_s": len(create) / sum(create),
            "api_create16_rps": rate,
            "api_create16_p50_ms": percentile(lat, 50) * 1000,
            "api_create16_p99_ms": percentile(lat, 99) * 1000,
            "service_rss_mib": rss_mib(proc.pid),
        }
        stubs.channel.close()
        return figures
    finally:
        proc.terminate()
        proc.wait(10)
