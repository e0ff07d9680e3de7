"""Replicas on one PostgreSQL that restarts (docs/design/replicas.md): the replica that
leads after the outage did not see it (no request reached it meanwhile), yet the agents'
heartbeats could not be recorded while the database was away; it gives the nodes their
grace period before it judges them, as a service gives them after its own start.

This module runs a PostgreSQL server of its own (tests/pg.py): stopping the session's
server would disturb other modules' databases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import Site, wait_for
from tests.pg import PgServer, running_server
from workspace.v1 import admin_pb2

GRACE_S = 12  # node_grace_s: the leader's liveness pass runs every GRACE_S / 4


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    yield from running_server()


def down_events(site: Site) -> list[str]:
    events = site.stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=False))
    down = [e for e in events if e.kind == "node.state" and "DOWN" in e.state.upper()]
    return [f"{e.node}: {e.reason}" for e in down]


def test_a_leader_after_a_database_outage_gives_the_nodes_their_grace(
    own_pg: PgServer, tmp_path: Path
) -> None:
    url = own_pg.database("outage_leader")
    shared = tmp_path / "data"
    sites: list[Site] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            sites.append(
                Site(tmp_path / name, database_url=url, data_dir=str(shared), node_grace_s=GRACE_S)
            )
        a, b = sites
        svc_a, svc_b = a.service, b.service
        assert svc_a is not None and svc_b is not None
        # B leads, and no request reaches it: the agent and every call are on A.
        svc_a.leader.close()
        wait_for(svc_b.leader.acting, 10, "B to lead")
        a.stubs.network(subnet="192.168.60.0/24")
        a.add_agent("n1")
        # The database goes away for longer than the grace period; the agent cannot
        # report meanwhile (stopped here, so that it reports exactly when told to).
        a.stop_agent("n1")
        own_pg.stop()
        try:
            time.sleep(GRACE_S + 2)
        finally:
            own_pg.start()
        wait_for(svc_b.leader.acting, 15, "B to lead again")
        # B's first liveness pass: the node's last heartbeat is from before the outage,
        # which B never saw.
        deadline = time.monotonic() + GRACE_S / 4 + 1
        while time.monotonic() < deadline:
            assert not down_events(a), "a node marked DOWN for the outage"
            time.sleep(0.2)
        a.add_agent("n1")  # reports again, within its grace
        nodes = a.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        assert [n.state for n in nodes] == [admin_pb2.NODE_STATE_READY]
        assert not down_events(a)
    finally:
        for s in sites:
            s.close()
