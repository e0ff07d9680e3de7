#!/usr/bin/env python3
"""What a create could cost at least through this API on SQLite: its floor, beside the
real create, in the same run (docs/design/control-plane.md, round fifteen).

1. The service runs as in ``benchmarks/api.py`` (one simulated node, ``--workspaces``
   made first); one client measures health checks and creates (p50, and the service's
   CPU per call from /proc).
2. The service stops, and a *floor server* starts on a copy of its database: a gRPC
   server built as the service's (``workspace.rpc.server``) with the health service and
   a ``CreateWorkspace`` that does only what a create must write and read, in one
   transaction, with the service's pragmas (WAL, ``synchronous=FULL``): the two reads
   a create makes (an earlier request with its id, a live workspace with its name), the
   node's claim, the generations it bumps, and copies of the rows the last real create
   wrote (its workspace row, address, usage interval, trust decision and site events,
   with a new id, name, request id, address and MAC); it answers with the real create's
   reply, renamed. No checks, no scheduler, no ORM: nothing a real create could do
   without.
3. The same client measures health checks and floor creates against it.

Prints name=value lines: health_p50_ms, create_p50_ms, create_vs_health_p50_ratio,
health_service_cpu_ms and create_service_cpu_ms (the real service); the same with
``floor_`` in front (the floor server); and
create_above_floor_ms, what the real create's own work adds to the floor's p50, with
logic_budget_ms, what a create within 3x a health check would leave for that work
(3 x health_p50_ms - floor_create_p50_ms).

    .venv/bin/python benchmarks/create_floor.py [--workspaces 300] [--requests 500]
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from benchmarks._common import (
    ROOT,
    cpu_s,
    create_as_clients_do,
    emit,
    percentile,
    start_service,
    timed,
)
from tests.functional.harness import Stubs
from workspace import rpc
from workspace.config import node_address_for
from workspace.node.v1 import nodes_pb2
from workspace.v1 import common_pb2, workspaces_pb2, workspaces_pb2_grpc

# The tables a create writes rows of besides its workspace row; each row names its
# workspace in ``workspace_id`` and has an autoincremented ``id``.
_COPIED = ("ip_allocations", "usage_intervals", "trust_audit", "site_events")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspaces", type=int, default=300)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--serve", nargs=3, metavar=("SOCKET", "DATABASE", "REPLY"), help="internal")
    args = p.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    with tempfile.TemporaryDirectory(prefix="ws-floor-", dir="/var/tmp") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    (tmp / "data").mkdir()
    db = tmp / "data" / "service.db"
    proc, sock = start_service(tmp, f'database_url = "sqlite:///{db}"\n')
    try:
        stubs = Stubs(rpc.channel(sock), rpc.channel(node_address_for(sock)))
        stubs.network("default", "10.213.0.0/16")
        stubs.import_image("img")
        stubs.nodes.Register(
            nodes_pb2.RegisterRequest(
                node="sim1",
                hypervisor="fake",
                cpus=100_000,
                memory_mib=1 << 30,
                networks=["default"],
            )
        )
        names = (f"ws{i}" for i in itertools.count())
        for _ in range(args.workspaces):
            stubs.create(name=next(names), memory_mib=64)
        figures = measure(
            stubs.channel,
            proc.pid,
            lambda: create_as_clients_do(stubs, name=next(names), memory_mib=64),
            args.requests,
            "",
        )
        reply = create_as_clients_do(stubs, name=next(names), memory_mib=64)
        stubs.channel.close()
    finally:
        proc.terminate()
        proc.wait(10)
    copy = tmp / "floor.db"
    shutil.copyfile(db, copy)
    (tmp / "reply.bin").write_bytes(reply.SerializeToString())
    fsock = tmp / "floor.sock"
    floor = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(fsock), str(copy), str(tmp / "reply.bin")],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert floor.stdout is not None
        floor.stdout.readline()  # "ready"
        channel = rpc.channel(f"unix:{fsock}")
        stub = workspaces_pb2_grpc.WorkspacesStub(channel)

        def floor_create() -> None:
            stub.CreateWorkspace(
                workspaces_pb2.CreateWorkspaceRequest(
                    image="img", name=next(names), memory_mib=64, request_id=uuid.uuid4().hex
                )
            )

        figures |= measure(channel, floor.pid, floor_create, args.requests, "floor_")
        channel.close()
    finally:
        floor.terminate()
        floor.wait(10)
    figures["create_vs_health_p50_ratio"] = figures["create_p50_ms"] / figures["health_p50_ms"]
    figures["floor_vs_health_p50_ratio"] = (
        figures["floor_create_p50_ms"] / figures["floor_health_p50_ms"]
    )
    figures["create_above_floor_ms"] = figures["create_p50_ms"] - figures["floor_create_p50_ms"]
    figures["logic_budget_ms"] = 3 * figures["health_p50_ms"] - figures["floor_create_p50_ms"]
    emit(figures)


def measure(
    channel: grpc.Channel, pid: int, create: Callable[[], object], n: int, prefix: str
) -> dict[str, float]:
    """p50 of health checks and of ``create``, and the server's CPU per call of each."""
    check = health_pb2_grpc.HealthStub(channel).Check
    req = health_pb2.HealthCheckRequest()
    timed(lambda: check(req), 200)  # warm-up
    timed(create, 50)
    out: dict[str, float] = {}
    for name, fn in (("health", lambda: check(req)), ("create", create)):
        cpu0 = cpu_s(pid)
        lat = timed(fn, n)
        out[f"{prefix}{name}_service_cpu_ms"] = (cpu_s(pid) - cpu0) / n * 1000
        out[f"{prefix}{name}_p50_ms"] = percentile(lat, 50) * 1000
    return out


# -- the floor server ------------------------------------------------------------------------


class Floor:
    """A create's writes and reads on ``database``, copied from its last real create."""

    def __init__(self, database: str, reply: bytes) -> None:
        self.db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            "busy_timeout=10000",
            "temp_store=MEMORY",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.lock = threading.Lock()
        self.reply = common_pb2.Workspace.FromString(reply)
        last = self.db.execute("SELECT * FROM workspaces ORDER BY created_at DESC LIMIT 1")
        self.ws_columns = [d[0] for d in last.description]
        self.ws_row = last.fetchone()
        wid = self.ws_row[self.ws_columns.index("id")]
        self.owner = self.ws_row[self.ws_columns.index("owner")]
        self.copied: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        for table in _COPIED:
            cur = self.db.execute(f"SELECT * FROM {table} WHERE workspace_id = ?", (wid,))
            self.copied[table] = ([d[0] for d in cur.description], cur.fetchall())
        self.next_ip = self.db.execute("SELECT max(ip_int) FROM ip_allocations").fetchone()[0]
        self.macs = itertools.count(1)

    def _insert(self, table: str, columns: list[str], row: dict[str, Any]) -> None:
        self.db.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [row[c] for c in columns],
        )

    def create(
        self, req: workspaces_pb2.CreateWorkspaceRequest, _ctx: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        wid = uuid.uuid4().hex[:12]
        fresh = {"id": wid, "name": req.name, "request_id": req.request_id}
        with self.lock:
            db = self.db
            db.execute("BEGIN")
            try:
                db.execute(
                    "SELECT id, request_hash FROM workspaces WHERE owner = ? AND request_id = ?",
                    (self.owner, req.request_id),
                ).fetchall()
                db.execute(
                    "SELECT id FROM workspaces WHERE owner = ? AND name = ? AND state != ? LIMIT 1",
                    (self.owner, req.name, "TERMINATED"),
                ).fetchall()
                db.execute(
                    "UPDATE nodes SET used_cpus = used_cpus + 1, used_memory_mib = "
                    "used_memory_mib + ?, orders_gen = ? WHERE name = ?",
                    (req.memory_mib, uuid.uuid4().int >> 65, "sim1"),
                )
                row = dict(zip(self.ws_columns, self.ws_row, strict=True)) | fresh
                self._insert("workspaces", self.ws_columns, row)
                for table, (columns, rows) in self.copied.items():
                    for template in rows:
                        row = dict(zip(columns, template, strict=True))
                        row["id"] = None
                        row["workspace_id"] = wid
                        if table == "ip_allocations":
                            self.next_ip += 1
                            row["ip_int"] = self.next_ip
                            row["ip"] = str(ipaddress.ip_address(self.next_ip))
                            row["mac"] = "0e:f1:" + next(self.macs).to_bytes(4, "big").hex(":")
                        self._insert(table, columns, row)
                db.execute(
                    "UPDATE generations SET value = ? WHERE name IN ('nodes', 'addresses')",
                    (uuid.uuid4().int >> 65,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        out = common_pb2.Workspace()
        out.CopyFrom(self.reply)
        out.id, out.name = wid, req.name
        return out


def serve(sock: str, database: str, reply: str) -> None:
    floor = Floor(database, Path(reply).read_bytes())
    server = rpc.server()
    handler = grpc.method_handlers_generic_handler(
        "workspace.v1.Workspaces",
        {
            "CreateWorkspace": grpc.unary_unary_rpc_method_handler(
                floor.create,
                request_deserializer=workspaces_pb2.CreateWorkspaceRequest.FromString,
                response_serializer=common_pb2.Workspace.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers([handler])
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    rpc.bind(server, f"unix:{sock}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
