#!/usr/bin/env python3
"""One caller holding idle streams cannot starve the others: latencies under a flood.

The service runs as its own process (SQLite store, unix sockets). One simulated node
registers through the Nodes API (its own server, ``node_listen``). Measured before and
while one client holds ``--streams`` idle WatchWorkspaces streams (all but
``max_streams_per_caller`` of them refused at once):

* ``report``: a node's full ReportStatus (its heartbeat), on the Nodes API;
* ``get``: another client call, GetWorkspace, on the client API.

    .venv/bin/python benchmarks/flood.py [--streams 500] [--requests 300]

Prints name=value lines: streams_refused, streams_open, flood_open_s,
{base,flood}_{report,get}_{p50,p99}_ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, start_service, summary, timed
from tests.functional.harness import Stubs
from workspace import rpc
from workspace.config import node_address_for
from workspace.node.v1 import nodes_pb2
from workspace.v1 import workspaces_pb2


def run(sock: str, args: argparse.Namespace) -> dict[str, float]:
    stubs = Stubs(rpc.channel(sock), rpc.channel(node_address_for(sock)))
    flood = Stubs(rpc.channel(sock))
    stubs.network("default", "10.213.0.0/16")
    stubs.import_image("img")
    stubs.nodes.Register(
        nodes_pb2.RegisterRequest(
            node="sim1", hypervisor="fake", cpus=1000, memory_mib=1 << 20, networks=["default"]
        )
    )
    wid = stubs.create(name="w", memory_mib=64).id
    report = nodes_pb2.ReportStatusRequest(node="sim1", full=True)
    get = workspaces_pb2.GetWorkspaceRequest(id=wid)

    def measure(prefix: str) -> dict[str, float]:
        n = args.requests
        out = summary(f"{prefix}_report", timed(lambda: stubs.nodes.ReportStatus(report), n))
        out |= summary(f"{prefix}_get", timed(lambda: stubs.ws.GetWorkspace(get), n))
        return {k: v for k, v in out.items() if k.endswith(("_p50_ms", "_p99_ms"))}

    figures = measure("base")
    refused = threading.Semaphore(0)
    n_refused = 0
    lock = threading.Lock()

    def done(call: grpc.Future) -> None:
        nonlocal n_refused
        if call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            with lock:
                n_refused += 1
            refused.release()

    t0 = time.perf_counter()
    calls = []
    for _ in range(args.streams):
        call = flood.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
        call.add_done_callback(done)
        calls.append(call)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if n_refused + args.cap >= args.streams:
                break
        refused.acquire(timeout=1)
    figures["flood_open_s"] = time.perf_counter() - t0
    figures |= measure("flood")
    figures["streams_refused"] = float(n_refused)
    figures["streams_open"] = float(sum(1 for c in calls if not c.done()))
    for c in calls:
        c.cancel()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--cap", type=int, default=64, help="max_streams_per_caller")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-flood-") as tmp:
        proc, sock = start_service(Path(tmp), f"max_streams_per_caller = {args.cap}\n")
        try:
            emit(run(sock, args))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
