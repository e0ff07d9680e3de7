"""`ws-admin replica list` (Admin.ListReplicas, docs/design/replicas.md): the service
replicas alive now, with their addresses, metrics URL, start and which one leads. On
SQLite the one process, the leader; on PostgreSQL every live replica, seen alike through
each, exactly one of them the leader; a replica stopped leaves the list within seconds
(and the other leads). Admins only."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.functional.harness import (
    Site,
    SitePki,
    TlsSite,
    leader_pid,
    start_replicas,
    wait_for,
)
from workspace import errors
from workspace.cli import admin as admin_cli
from workspace.client import Client
from workspace.v1 import admin_pb2


def listed(address: str) -> list[admin_pb2.Replica]:
    with Client(address, timeout_s=10) as c:
        return c.list_replicas()


def cli_json(capsys: pytest.CaptureFixture[str], address: str) -> list[dict[str, object]]:
    """`ws-admin replica list -o json` against ``address``."""
    capsys.readouterr()
    assert admin_cli.main(["--service", address, "replica", "list", "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list)
    return out


def test_on_sqlite_the_one_process_is_listed_as_the_leader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = time.time()
    site = Site(tmp_path, metrics_listen="127.0.0.1:0")
    try:
        svc = site.service
        assert svc is not None
        (me,) = listed(site.address)
        assert me.id and me.leader
        assert (me.pid, me.listen) == (os.getpid(), site.address)
        assert me.node_listen == svc.cfg.node_address
        assert me.metrics_url == svc.metrics_url and me.metrics_url.startswith("http://127.0.0.1:")
        assert before - 5 <= me.started_at.seconds <= time.time()
        # The CLI: the same, as JSON and as a table.
        (row,) = cli_json(capsys, site.address)
        assert (row["id"], row["leader"], row["pid"]) == (me.id, True, os.getpid())
        assert row["metrics_url"] == me.metrics_url and row["node_listen"] == me.node_listen
        assert admin_cli.main(["--service", site.address, "replica", "list"]) == 0
        header, line = capsys.readouterr().out.splitlines()
        assert header.split() == [
            "ID", "LEADER", "HOST", "PID", "LISTEN", "NODE_LISTEN", "METRICS", "STARTED",
        ]  # fmt: skip
        assert line.split()[:2] == [me.id, "yes"] and str(os.getpid()) in line.split()
    finally:
        site.close()


def test_only_admins_list_the_replicas(tmp_path: Path) -> None:
    site = TlsSite(tmp_path, SitePki(tmp_path / "pki"))
    try:
        assert [r.leader for r in site.stubs.admin.ListReplicas(
            admin_pb2.ListReplicasRequest()).replicas] == [True]  # fmt: skip
        alice = site.pki.tls(site.pki.user("alice"))
        with Client(site.address, alice) as c, pytest.raises(errors.PermissionDenied):
            c.list_replicas()
    finally:
        site.close()


# -- several replicas on PostgreSQL -----------------------------------------------------------


def test_two_replicas_on_postgresql_both_listed_one_leader_a_stopped_one_leaves(
    tmp_path: Path, pg_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    replicas = start_replicas(tmp_path, pg_db, metrics_listen="127.0.0.1:0")
    procs = {name: r.proc for name, r in replicas.items()}
    socks = {name: r.listen for name, r in replicas.items()}
    try:
        pids = {p.popen.pid: name for name, p in procs.items()}
        for name, sock in socks.items():
            wait_for(lambda s=sock: Path(s[5:]).exists(), 60, f"replica {name}")

        def settled(address: str) -> list[admin_pb2.Replica]:
            """Both replicas listed, one of them the leader (the one whose session
            holds the leader lock)."""
            got = listed(address)
            ok = sorted(r.pid for r in got) == sorted(pids) and [
                r.pid for r in got if r.leader
            ] == [leader_pid(pg_db)]
            return got if ok else []

        seen = {name: wait_for(lambda s=sock: settled(s), 20, f"both through {name}")
                for name, sock in socks.items()}  # fmt: skip
        for name, got in seen.items():
            # The replica answering comes first; each as it registered itself.
            assert got[0].pid == procs[name].popen.pid
            for r in got:
                sock = socks[pids[r.pid]]
                assert (r.listen, r.node_listen) == (sock, sock.replace("svc.sock", "nodes.sock"))
                assert r.metrics_url.startswith("http://127.0.0.1:") and r.id and r.host
        assert {r.id for r in seen["a"]} == {r.id for r in seen["b"]}
        assert len({r.metrics_url for r in seen["a"]}) == 2
        leader = pids[leader_pid(pg_db)]
        survivor = "b" if leader == "a" else "a"
        rows = cli_json(capsys, f"{socks['a']},{socks['b']}")
        assert sorted((r["pid"], r["leader"]) for r in rows) == sorted(
            (p.popen.pid, name == leader) for name, p in procs.items()
        )

        # The leader is stopped (by its pid): it leaves the list, and the survivor leads.
        procs[leader].terminate()
        alone = wait_for(
            lambda: (
                [(r.pid, r.leader) for r in listed(socks[survivor])]
                == [(procs[survivor].popen.pid, True)]
            ),
            15,
            "the stopped replica gone from the list, the survivor leading",
        )
        assert alone
    finally:
        for p in procs.values():
            p.terminate()
