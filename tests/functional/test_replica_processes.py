"""Two ``workspace-service`` processes on one PostgreSQL, an agent process and clients
with both addresses: kill -9 of the leading replica under load (docs/design/replicas.md).
Every acknowledged create survives, nothing is made twice, the agent reconnects to the
other replica and is never marked DOWN, and the leader lock moves to the survivor."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.functional.harness import (
    WS,
    Proc,
    Stubs,
    agent_config,
    leader_pid,
    start_replicas,
    wait_for,
    write_config,
)
from workspace import errors, rpc
from workspace.client import Client
from workspace.v1 import admin_pb2


def test_kill_9_of_a_replica_under_load(tmp_path: Path, pg_db: str) -> None:
    replicas = start_replicas(
        tmp_path, pg_db, heartbeat_interval_s=1, node_grace_s=6, default_stop_timeout_s=2
    )
    procs = {name: r.proc for name, r in replicas.items()}
    socks = {name: r.listen for name, r in replicas.items()}
    both = f"{socks['a']},{socks['b']}"
    nodes_both = ",".join(s.replace("svc.sock", "nodes.sock") for s in socks.values())
    agent_conf = write_config(
        tmp_path / "agent.toml",
        agent_config(tmp_path, "node1", nodes_both, cpus=256, memory_mib=1 << 20),
    )
    agent: Proc | None = None
    stubs = {name: Stubs(rpc.channel(sock)) for name, sock in socks.items()}
    try:
        for s in socks.values():
            wait_for(lambda s=s: Path(s[5:]).exists(), what=f"{s}")
        stubs["b"].network(subnet="192.168.60.0/22")
        stubs["b"].import_image("img")
        agent = Proc(["-m", "agent.main", "--config", str(agent_conf)], tmp_path / "agent.log")
        wait_for(lambda: _node_states(stubs["b"]) == [admin_pb2.NODE_STATE_READY], what="READY")
        pids = {p.popen.pid: name for name, p in procs.items()}
        leader = wait_for(lambda: pids.get(leader_pid(pg_db), ""), 10, "a leader")
        survivor = "b" if leader == "a" else "a"
        assert _lock_sessions(pg_db) == [
            f"workspace-service candidate {procs[survivor].popen.pid}",
            f"workspace-service leader {procs[leader].popen.pid}",
        ]
        stubs_s = stubs[survivor]

        acked: dict[str, str] = {}
        failed: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def load(k: int) -> None:
            with Client(both, timeout_s=15) as c:
                i = 0
                while not stop.is_set():
                    rid = f"r{k}-{i}"
                    i += 1
                    try:
                        w = c.create_workspace("img", name=rid, request_id=rid, memory_mib=64)
                    except errors.WorkspaceError:
                        with lock:
                            failed.append(rid)
                        continue
                    with lock:
                        acked[rid] = w.id

        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 20, 20, "creates under way")
        procs[leader].kill9()  # mid-create
        t0 = time.monotonic()
        wait_for(lambda: leader_pid(pg_db) == procs[survivor].popen.pid, 10, "the survivor leads")
        assert time.monotonic() - t0 < 5
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 20, 20, "creates going on through B")
        stop.set()
        for t in threads:
            t.join(30)

        with Client(both) as c:
            # a create whose answer was lost: its request id gives the same workspace
            for rid in failed:
                c.create_workspace("img", name=rid, request_id=rid, memory_mib=64)
            views = c.list_workspaces(include_terminated=True)
        by_name: dict[str, list[str]] = {}
        for v in views:
            by_name.setdefault(v.name, []).append(v.id)
        assert all(len(ids) == 1 for ids in by_name.values()), "a request made two workspaces"
        for rid, wid in acked.items():
            assert by_name.get(rid) == [wid], f"acknowledged create {rid} lost"
        ips = [v.nics[0].ip for v in views]
        assert len(ips) == len(set(ips))
        # A client whose list starts with the dead replica: calls that cannot be retried
        # once received (a key added) and one-shot listings go to the survivor, since
        # the dead one refused the connection: nothing was sent to it.
        with Client(f"{socks[leader]},{socks[survivor]}") as c:
            public = (
                Ed25519PrivateKey.generate()
                .public_key()
                .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            )
            key = c.add_ssh_key(public.decode() + " alice")
            assert [k.fingerprint for k in c.list_ssh_keys()] == [key.fingerprint]
            created = [e for e in c.watch_events(timeout_s=10) if e.kind == "workspace.created"]
            assert len(created) == len(views)
        # The agent is on B now: the last create runs, and the node never went DOWN
        # (node_grace_s = 6: the survivor's loops would have marked it by now).
        last = max(acked, key=lambda r: (int(r[1 : r.index("-")]), int(r.split("-")[1])))
        stubs_s.wait_state(acked[last], WS.WORKSPACE_STATE_RUNNING, 30)
        time.sleep(3)
        assert _node_states(stubs_s) == [admin_pb2.NODE_STATE_READY]
        events = list(stubs_s.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=False)))
        assert not [e for e in events if e.kind == "node.state" and "DOWN" in e.state.upper()]
        # Its log names the replica it is on, not the whole list.
        said = [x for x in (tmp_path / "agent.log").read_text().splitlines() if "registered" in x]
        assert said[-1].endswith(
            f"registered with {socks[survivor].replace('svc.sock', 'nodes.sock')}"
        ), said
    finally:
        for st in stubs.values():
            st.channel.close()
        if agent is not None:
            agent.terminate()
        for p in procs.values():
            p.terminate()


def _lock_sessions(url: str) -> list[str]:
    """The replicas' leader-lock sessions as pg_stat_activity names them."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE application_name ~ '^workspace-service (leader|candidate) '"
            " AND datname = current_database() ORDER BY application_name"
        ).fetchall()
    return [r[0] for r in rows]


def _node_states(stubs: Stubs) -> list[int]:
    return [n.state for n in stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes]
