#!/usr/bin/env python3
"""Unary API throughput and latency with N workspaces in the store.

Baseline in the same run: an empty gRPC health check round trip on the same channel.
The service runs as its own process (SQLite store, unix socket); one simulated node
(registered through the agent API, no agent process) holds the workspaces.

    .venv/bin/python benchmarks/api.py [--workspaces 1000] [--requests 2000]
        [--database sqlite|postgresql]

Prints name=value lines: health_rps, get_rps, get_p99_ms, list_p99_ms, create_rps, ...,
create_vs_health_p50_ratio (one client), and create16_rps / create16_p50_ms /
create16_p99_ms: creates from 16 client threads at once (``--clients``), each
acknowledged after its durable commit; create_service_cpu_ms and
create16_service_cpu_ms: the service process's CPU (all its threads, from /proc) per
create in each of those two runs. ``--database postgresql`` runs the same against
a throwaway PostgreSQL server (fsync on; the names printed are the same).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks._common import (
    Database,
    add_database_option,
    concurrent,
    cpu_s,
    create_as_clients_do,
    emit,
    percentile,
    rss_mib,
    start_service,
    summary,
    timed,
)
from tests.functional.harness import Stubs
from workspace import rpc
from workspace.config import node_address_for
from workspace.node.v1 import nodes_pb2
from workspace.v1 import workspaces_pb2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspaces", type=int, default=1000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--creates", type=int, default=300)
    p.add_argument("--clients", type=int, default=16, help="threads of the concurrent creates")
    add_database_option(p)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        db = Database(args.database, Path(tmp))
        try:
            proc, sock = start_service(Path(tmp), db.config())
            try:
                run(sock, proc.pid, args)
            finally:
                proc.terminate()
                proc.wait(10)
        finally:
            db.close()


def run(sock: str, pid: int, args: argparse.Namespace) -> None:
    stubs = Stubs(rpc.channel(sock), rpc.channel(node_address_for(sock)))
    stubs.network("default", "10.213.0.0/16")
    stubs.import_image("img")
    stubs.nodes.Register(
        nodes_pb2.RegisterRequest(
            node="sim1", hypervisor="fake", cpus=65_536, memory_mib=1 << 30, networks=["default"]
        )
    )
    ids = [stubs.create(name=f"pre{i}", memory_mib=64).id for i in range(args.workspaces)]

    health = health_pb2_grpc.HealthStub(stubs.channel)
    hreq = health_pb2.HealthCheckRequest()
    timed(lambda: health.Check(hreq), 200)  # warm-up
    figures = summary("health", timed(lambda: health.Check(hreq), args.requests))

    rng = random.Random(1)
    figures |= summary(
        "get",
        timed(
            lambda: stubs.ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id=rng.choice(ids))),
            args.requests,
        ),
    )
    lreq = workspaces_pb2.ListWorkspacesRequest()
    figures |= summary("list", timed(lambda: stubs.ws.ListWorkspaces(lreq), 50))
    counter = iter(range(10**9))
    cpu0 = cpu_s(pid)
    figures |= summary(
        "create",
        timed(
            lambda: create_as_clients_do(stubs, name=f"new{next(counter)}", memory_mib=64),
            args.creates,
        ),
    )
    figures["create_service_cpu_ms"] = (cpu_s(pid) - cpu0) / args.creates * 1000
    per_client = max(1, args.creates // args.clients) * 2
    cpu0 = cpu_s(pid)
    rate, lat = concurrent(
        lambda i: create_as_clients_do(stubs, name=f"par{i}", memory_mib=64),
        args.clients,
        per_client,
    )
    figures["create16_service_cpu_ms"] = (cpu_s(pid) - cpu0) / len(lat) * 1000
    figures["create16_rps"] = rate
    figures["create16_p50_ms"] = percentile(lat, 50) * 1000
    figures["create16_p99_ms"] = percentile(lat, 99) * 1000
    figures["create_vs_health_p50_ratio"] = figures["create_p50_ms"] / figures["health_p50_ms"]
    figures["workspaces_in_store"] = float(args.workspaces + args.creates + len(lat))
    figures["get_vs_health_ratio"] = figures["get_mean_ms"] / figures["health_mean_ms"]
    figures["service_rss_mib"] = rss_mib(pid)
    emit(figures)
    stubs.channel.close()


if __name__ == "__main__":
    main()
