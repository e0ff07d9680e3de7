"""Replicas that hang rather than die (SIGSTOP: their connections stay up, nothing
answers), as processes on one PostgreSQL (docs/design/replicas.md). The agent on a hung
replica moves to the other one and its node is never marked DOWN; a hung leader is fenced
(its session ended) and the other replica leads; resumed, the old leader does not lead."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.functional.harness import (
    WS,
    Proc,
    Replica,
    Stubs,
    agent_config,
    leader_pid,
    start_replicas,
    wait_for,
    write_config,
)
from workspace import rpc
from workspace.v1 import admin_pb2

GRACE_S = 6
FENCE_S = 5


@pytest.fixture
def replicas(tmp_path: Path, pg_db: str) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    try:
        made.extend(
            start_replicas(
                tmp_path,
                pg_db,
                heartbeat_interval_s=1,
                node_grace_s=GRACE_S,
                leader_fence_s=FENCE_S,
            ).values()
        )
        for r in made:
            wait_for(lambda r=r: Path(r.nodes[5:]).exists(), 60, r.nodes)
        yield made
    finally:
        for r in made:
            if r.proc.popen.poll() is None:
                os.kill(r.pid, signal.SIGCONT)  # a stopped process cannot stop
            r.proc.terminate()


def hang_between_writes(url: str, replica: Replica) -> None:
    """SIGSTOP ``replica`` where none of its sessions is inside a transaction. Stopped in
    the middle of one, it would hold the store's write lock until PostgreSQL ends that
    session (``engines.IDLE_IN_TRANSACTION_S``, longer than these tests' node grace):
    tests/contract/test_store_hung_writer.py is that case. Here it is a hung process."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        for _ in range(200):
            os.kill(replica.pid, signal.SIGSTOP)
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE %s AND state <> 'idle'",
                (f"% {replica.pid}",),
            ).fetchone()
            if busy is not None and busy[0] == 0:
                return
            os.kill(replica.pid, signal.SIGCONT)
            time.sleep(0.01)
    raise AssertionError(f"replica {replica.pid} was never found between transactions")


def lead(url: str, replicas: list[Replica]) -> tuple[Replica, Replica]:
    """(the leader, the other one), once one leads."""
    pid = wait_for(lambda: leader_pid(url), 15, "a leader")
    first = next(r for r in replicas if r.pid == pid)
    return first, next(r for r in replicas if r is not first)


def test_an_agent_on_a_hung_replica_moves_and_its_node_stays_up(
    tmp_path: Path, pg_db: str, replicas: list[Replica]
) -> None:
    leader, other = lead(pg_db, replicas)
    # The agent dials the replica that does not lead first: that one hangs.
    conf = write_config(
        tmp_path / "agent.toml",
        agent_config(tmp_path, "node1", f"{other.nodes},{leader.nodes}"),
    )
    agent_log = tmp_path / "agent.log"
    agent = Proc(["-m", "agent.main", "--config", str(conf)], agent_log)
    stubs = Stubs(rpc.channel(leader.listen), rpc.channel(leader.nodes))
    try:
        stubs.network(subnet="192.168.61.0/24")
        stubs.import_image("img")
        wait_for(lambda: f"registered with {other.nodes}" in agent_log.read_text(), 20, "agent")
        w = stubs.create(name="box", request_id="r-box")
        stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING, 30)

        hang_between_writes(pg_db, other)
        t0 = time.monotonic()
        wait_for(
            lambda: f"registered with {leader.nodes}" in agent_log.read_text(),
            GRACE_S * 3,
            "the agent registered with the leader",
        )
        print(f"agent moved {time.monotonic() - t0:.1f} s after SIGSTOP")
        time.sleep(GRACE_S + 2)  # past node_grace_s while the other replica is stopped
        nodes = stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        assert [n.state for n in nodes] == [admin_pb2.NODE_STATE_READY]
        assert stubs.get(w.id).state == WS.WORKSPACE_STATE_RUNNING
        events = list(stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=False)))
        assert not [e for e in events if e.kind == "node.state" and "DOWN" in e.state.upper()]
        log = agent_log.read_text()
        assert f"report to {other.nodes} failed" in log or f"service {other.nodes}" in log
    finally:
        os.kill(other.pid, signal.SIGCONT)
        stubs.channel.close()
        agent.terminate()


def test_a_hung_leader_is_fenced_and_does_not_lead_when_it_resumes(
    pg_db: str, replicas: list[Replica]
) -> None:
    leader, other = lead(pg_db, replicas)
    os.kill(leader.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        wait_for(lambda: leader_pid(pg_db) == other.pid, FENCE_S + 10, "the other replica leads")
        print(f"new leader {time.monotonic() - t0:.1f} s after SIGSTOP")
        assert other.said("has not renewed its lease")
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    # Resumed, the old leader finds its session ended and says it does not lead.
    wait_for(lambda: leader.said("leader connection lost"), 10, "the old leader to notice")
    assert leader.said("this replica is no longer the leader")
    assert leader_pid(pg_db) == other.pid
