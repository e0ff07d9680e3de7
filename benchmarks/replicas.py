#!/usr/bin/env python3
"""How long a change made through one replica takes to reach a watch on another.

Two in-process services on one PostgreSQL (a server of its own, tests/pg.py; Debian's
postgresql must be installed). For each create through replica A, the time from the
create's answer to the WorkspaceEvent on a watch opened on A (the same-run baseline: the
local notifier) and on a watch opened on B (NOTIFY, the listener, a re-read of the view),
both counted from the start of the create call (so both include the create itself).

    .venv/bin/python benchmarks/replicas.py [--creates 200]

Prints name=value lines: health_p50_ms, same_replica_event_p50_ms/_p99_ms,
other_replica_event_p50_ms/_p99_ms.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks._common import emit, percentile, timed
from tests.functional.harness import Site
from tests.pg import PgServer
from workspace.node.v1 import nodes_pb2
from workspace.v1 import workspaces_pb2


def follow(site: Site, out: queue.Queue[tuple[str, float]]) -> None:
    stream = site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
    try:
        for ev in stream:
            if not ev.initial:
                out.put((ev.workspace.name, time.perf_counter()))
    except Exception:
        return


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--creates", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-replicas-") as tmp:
        root = Path(tmp)
        pg = PgServer()  # a directory of its own that the postgres user can reach
        pg.start()
        sites: list[Site] = []
        try:
            url = pg.database("bench")
            for name in ("a", "b"):
                (root / name).mkdir()
                sites.append(
                    Site(
                        root / name,
                        database_url=url,
                        data_dir=str(root / "data"),
                        log_level="WARNING",
                    )
                )
            run(sites, args.creates)
        finally:
            for s in sites:
                s.close()
            pg.close()


def run(sites: list[Site], creates: int) -> None:
    a, b = sites
    a.stubs.network("default", "10.213.0.0/16")
    a.stubs.import_image("img")
    a.stubs.nodes.Register(
        nodes_pb2.RegisterRequest(
            node="sim1", hypervisor="fake", cpus=65_536, memory_mib=1 << 30, networks=["default"]
        )
    )
    health = health_pb2_grpc.HealthStub(a.stubs.channel)
    hlat = timed(lambda: health.Check(health_pb2.HealthCheckRequest()), 500)
    events: dict[str, queue.Queue[tuple[str, float]]] = {"a": queue.Queue(), "b": queue.Queue()}
    for site, key in ((a, "a"), (b, "b")):
        threading.Thread(target=follow, args=(site, events[key]), daemon=True).start()
    time.sleep(0.5)
    same: list[float] = []
    other: list[float] = []
    for i in range(creates):
        name = f"w{i}"
        t0 = time.perf_counter()
        a.stubs.create(name=name, memory_mib=64)
        for key, out in (("a", same), ("b", other)):
            while True:
                got, at = events[key].get(timeout=10)
                if got == name:
                    out.append(at - t0)
                    break
    emit(
        {
            "health_p50_ms": percentile(hlat, 50) * 1000,
            "same_replica_event_p50_ms": percentile(same, 50) * 1000,
            "same_replica_event_p99_ms": percentile(same, 99) * 1000,
            "other_replica_event_p50_ms": percentile(other, 50) * 1000,
            "other_replica_event_p99_ms": percentile(other, 99) * 1000,
        }
    )


if __name__ == "__main__":
    main()
