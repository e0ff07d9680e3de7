#!/usr/bin/env python3
"""What a create could cost at least through this API on SQLite: its floor, beside the
real create, in the same run (docs/design/control-plane.md, rounds fifteen and sixteen).

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
4. A *lean server* does the same on another copy, and also runs, with the project's own
   functions, the least a create must do in Python besides its statements: the call's
   context, the request decoded, its hash and checks, the scheduler's choice (on a
   snapshot kept between creates), the row's values with its JSON columns encoded, its
   site events, its view and reply, the events published and its log line. Not the
   image, trust, quota, lease, policy, seed or order-size work a real create also does:
   the best a create path without the ORM could do (round sixteen).

Each server is checked to have written one workspace per create it answered.

Prints name=value lines: health_p50_ms, create_p50_ms, create_vs_health_p50_ratio,
health_service_cpu_ms and create_service_cpu_ms (the real service); the same with
``floor_`` and ``lean_`` in front (the floor and lean servers); floor_vs_health_p50_ratio
and lean_vs_health_p50_ratio (each against its own server's health check);
create_above_floor_ms, what the real create's own work adds to the floor's p50, with
logic_budget_ms, what a create within 3x a health check would leave for that work
(3 x health_p50_ms - floor_create_p50_ms).

    .venv/bin/python benchmarks/create_floor.py [--workspaces 300] [--requests 500]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy import JSON, Table

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
from workspace import callctx, rpc, scheduler
from workspace import log as workspace_log
from workspace.codec import v1
from workspace.config import LimitsConfig, SchedulerConfig, node_address_for
from workspace.domain.events import SiteEvent
from workspace.domain.model import Nic
from workspace.node.v1 import nodes_pb2
from workspace.ops import create
from workspace.ops.events import Notifier
from workspace.store import Workspace
from workspace.store.mapping import ViewRow, view_row, workspace_view
from workspace.v1 import common_pb2, workspaces_pb2, workspaces_pb2_grpc

log = logging.getLogger("workspace.ops.create")

# Creates each server answers before it is measured.
WARM_UP = 50

# The tables a create writes rows of besides its workspace row; each row names its
# workspace in ``workspace_id`` and has an autoincremented ``id``.
_COPIED = ("ip_allocations", "usage_intervals", "trust_audit", "site_events")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspaces", type=int, default=300)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--serve", nargs=3, metavar=("SOCKET", "DATABASE", "REPLY"), help="internal")
    p.add_argument("--logic", action="store_true", help="internal: the lean server")
    args = p.parse_args()
    if args.serve:
        sock, database, reply = args.serve
        serve(sock, database, reply, logic=args.logic)
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
                cpus=65_536,
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
    (tmp / "reply.bin").write_bytes(reply.SerializeToString())
    before = _workspaces(db)
    for prefix, extra in (("floor_", []), ("lean_", ["--logic"])):
        copy = tmp / f"{prefix}copy.db"
        shutil.copyfile(db, copy)
        fsock = tmp / f"{prefix}server.sock"
        with (tmp / f"{prefix}server.log").open("wb") as server_log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(fsock),
                    str(copy),
                    str(tmp / "reply.bin"),
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=server_log,
                cwd=ROOT,
            )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "ready"
            channel = rpc.channel(f"unix:{fsock}")
            stub = workspaces_pb2_grpc.WorkspacesStub(channel)

            def floor_create(stub: workspaces_pb2_grpc.WorkspacesStub = stub) -> None:
                stub.CreateWorkspace(
                    workspaces_pb2.CreateWorkspaceRequest(
                        image="img", name=next(names), memory_mib=64, request_id=uuid.uuid4().hex
                    )
                )

            figures |= measure(channel, server.pid, floor_create, args.requests, prefix)
            channel.close()
        finally:
            server.terminate()
            server.wait(10)
        made = _workspaces(copy) - before
        if made != WARM_UP + args.requests:  # each create wrote its row, and only one
            sys.exit(f"the {prefix}server made {made} workspaces, not {WARM_UP + args.requests}")
    figures["create_vs_health_p50_ratio"] = figures["create_p50_ms"] / figures["health_p50_ms"]
    figures["floor_vs_health_p50_ratio"] = (
        figures["floor_create_p50_ms"] / figures["floor_health_p50_ms"]
    )
    figures["create_above_floor_ms"] = figures["create_p50_ms"] - figures["floor_create_p50_ms"]
    figures["logic_budget_ms"] = 3 * figures["health_p50_ms"] - figures["floor_create_p50_ms"]
    figures["lean_vs_health_p50_ratio"] = (
        figures["lean_create_p50_ms"] / figures["lean_health_p50_ms"]
    )
    emit(figures)


def _workspaces(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT count(*) FROM workspaces").fetchone()[0])


def measure(
    channel: grpc.Channel, pid: int, create: Callable[[], object], n: int, prefix: str
) -> dict[str, float]:
    """p50 of health checks and of ``create``, and the server's CPU per call of each."""
    check = health_pb2_grpc.HealthStub(channel).Check
    req = health_pb2.HealthCheckRequest()
    timed(lambda: check(req), 200)  # warm-up
    timed(create, WARM_UP)
    out: dict[str, float] = {}
    for name, fn in (("health", lambda: check(req)), ("create", create)):
        cpu0 = cpu_s(pid)
        lat = timed(fn, n)
        out[f"{prefix}{name}_service_cpu_ms"] = (cpu_s(pid) - cpu0) / n * 1000
        out[f"{prefix}{name}_p50_ms"] = percentile(lat, 50) * 1000
    return out


# -- the floor server ------------------------------------------------------------------------


class Floor:
    """A create's writes and reads on ``database``, copied from its last real create.

    ``logic``: the *lean* server, which also runs what a create cannot do without in
    Python, with the project's own functions: the call's context, the request decoded
    and its hash, its checks, the scheduler's choice on a kept snapshot, the row's
    values with its JSON columns encoded, the site events, the view and its reply, the
    events published and the log line. What it still copies is only what fixes no
    cost (the image's layout, the policy, the trust decision's row)."""

    def __init__(self, database: str, reply: bytes, logic: bool = False) -> None:
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
        self.logic = logic
        if logic:
            self._keep_for_logic()

    def _keep_for_logic(self) -> None:
        """What a lean create would keep between creates: the limits, a scheduler
        snapshot, the network, the row's values decoded."""
        self.limits = LimitsConfig()
        self.snapshot = scheduler.Snapshot(
            [
                scheduler.NodeView(
                    "sim1", "READY", 65_536, 1 << 30, hypervisor="fake", networks=("default",)
                )
            ],
            SchedulerConfig(),
        )
        self.notifier = Notifier()
        table = cast(Table, Workspace.__table__)
        self.json_columns = [c.name for c in table.columns if isinstance(c.type, JSON)]
        self.ws_values = dict(zip(self.ws_columns, self.ws_row, strict=True))
        for c in self.json_columns:
            text = self.ws_values[c]
            self.ws_values[c] = None if text is None else json.loads(text)
        net = self.db.execute(
            "SELECT subnet, gateway, bridge, dns, vlan FROM networks WHERE name = 'default'"
        ).fetchone()
        self.network = net

    def _insert(self, table: str, columns: list[str], row: dict[str, Any]) -> None:
        self.db.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [row[c] for c in columns],
        )

    def _write(self, row: dict[str, Any], memory_mib: int) -> tuple[str, str]:
        """A create's reads and writes, in one transaction; the address and MAC taken."""
        wid, name, request_id = row["id"], row["name"], row["request_id"]
        ip = mac = ""
        with self.lock:
            db = self.db
            db.execute("BEGIN")
            try:
                db.execute(
                    "SELECT id, request_hash FROM workspaces WHERE owner = ? AND request_id = ?",
                    (self.owner, request_id),
                ).fetchall()
                db.execute(
                    "SELECT id FROM workspaces WHERE owner = ? AND name = ? AND state != ? LIMIT 1",
                    (self.owner, name, "TERMINATED"),
                ).fetchall()
                db.execute(
                    "UPDATE nodes SET used_cpus = used_cpus + 1, used_memory_mib = "
                    "used_memory_mib + ?, orders_gen = ? WHERE name = ?",
                    (memory_mib, uuid.uuid4().int >> 65, "sim1"),
                )
                self._insert("workspaces", self.ws_columns, row)
                for table, (columns, rows) in self.copied.items():
                    for template in rows:
                        copy = dict(zip(columns, template, strict=True))
                        copy["id"] = None
                        copy["workspace_id"] = wid
                        if table == "ip_allocations":
                            self.next_ip += 1
                            ip = str(ipaddress.ip_address(self.next_ip))
                            mac = "0e:f1:" + next(self.macs).to_bytes(4, "big").hex(":")
                            copy |= {"ip_int": self.next_ip, "ip": ip, "mac": mac}
                        self._insert(table, columns, copy)
                db.execute(
                    "UPDATE generations SET value = ? WHERE name IN ('nodes', 'addresses')",
                    (uuid.uuid4().int >> 65,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return ip, mac

    def create(
        self, req: workspaces_pb2.CreateWorkspaceRequest, _ctx: grpc.ServicerContext
    ) -> common_pb2.Workspace:
        if self.logic:
            return self._lean(req)
        wid = uuid.uuid4().hex[:12]
        fresh = {"id": wid, "name": req.name, "request_id": req.request_id}
        self._write(dict(zip(self.ws_columns, self.ws_row, strict=True)) | fresh, req.memory_mib)
        out = common_pb2.Workspace()
        out.CopyFrom(self.reply)
        out.id, out.name = wid, req.name
        return out

    def _lean(self, req: workspaces_pb2.CreateWorkspaceRequest) -> common_pb2.Workspace:
        with callctx.bound(who="user:local", method="CreateWorkspace", request_id=req.request_id):
            asked = v1.create_from_proto(req)
            hash_ = create.request_hash(asked)
            create.check_wait(asked.wait_for_capacity_s, self.limits)
            spec = create.check_spec(asked.spec, self.limits)
            wid = uuid.uuid4().hex[:12]
            wanted = scheduler.Request(spec.cpus, spec.memory_mib, ("default",))
            placed = scheduler.place_group_on(self.snapshot, [wanted]).placements
            assert placed is not None and placed[0].node is not None
            node = placed[0].node
            now = time.time()
            row = self.ws_values | {
                "id": wid,
                "name": spec.name,
                "request_id": asked.request_id,
                "request_hash": hash_,
                "cpus": spec.cpus,
                "memory_mib": spec.memory_mib,
                "claimed_cpus": placed[0].claimed_cpus,
                "claimed_memory_mib": placed[0].claimed_memory_mib,
                "node": node,
                "created_at": now,
                "updated_at": now,
            }
            for c in self.json_columns:
                row[c] = json.dumps(row[c])
            events = [
                SiteEvent(now, "trust.decision", "user:local", wid, subject="img", reason="warn"),
                SiteEvent(now, "workspace.created", "user:local", wid, spec.name, node, "", "img"),
            ]
            ip, mac = self._write(row, spec.memory_mib)
            subnet, gateway, bridge, dns, vlan = self.network
            nic = Nic(
                "default",
                ip,
                mac,
                int(subnet.rsplit("/", 1)[1]),
                gateway,
                bridge,
                subnet,
                tuple(json.loads(dns) if dns else ()),
                vlan or 0,
            )
            view = workspace_view(view_row([row[f] for f in ViewRow._fields]), (nic,))
            self.notifier.workspace_changed(view)
            self.notifier.node_changed(node)
            self.notifier.site_events(events)
            log.info("workspace %s (%s) scheduled on node %s", wid, spec.name, node)
            return v1.workspace_to_proto(view)


def serve(sock: str, database: str, reply: str, logic: bool = False) -> None:
    workspace_log.setup("INFO", "floor")
    floor = Floor(database, Path(reply).read_bytes(), logic)
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
