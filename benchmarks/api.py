#!/usr/bin/env python3
"""Unary API throughput and latency with N workspaces in the store.

Baseline in the same run: an empty gRPC health check round trip on the same channel.
The service runs as its own process (SQLite store, unix socket); one simulated node
(registered through the agent API, no agent process) holds the workspaces.

    .venv/bin/python benchmarks/api.py [--workspaces 1000] [--requests 2000]

Prints name=value lines: health_rps, get_rps, get_p99_ms, list_p99_ms, create_rps, ...
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks._common import emit, rss_mib, start_service, summary, timed
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
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        proc, sock = start_service(Path(tmp))
        try:
            run(sock, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(10)


def run(sock: str, pid: int, args: argparse.Namespace) -> None:
    stubs = Stubs(rpc.channel(sock), rpc.channel(node_address_for(sock)))
    stubs.network("default", "10.213.0.0/16")
    stubs.import_image("img")
    stubs.nodes.Register(
        nodes_pb2.RegisterRequest(
            node="sim1", hypervisor="fake", cpus=100_000, memory_mib=1 << 40, networks=["default"]
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
    figures |= summary(
        "create",
        timed(lambda: stubs.create(name=f"new{next(counter)}", memory_mib=64), args.creates),
    )
    figures["workspaces_in_store"] = float(args.workspaces + args.creates)
    figures["get_vs_health_ratio"] = figures["get_mean_ms"] / figures["health_mean_ms"]
    figures["service_rss_mib"] = rss_mib(pid)
    emit(figures)
    stubs.channel.close()


if __name__ == "__main__":
    main()
