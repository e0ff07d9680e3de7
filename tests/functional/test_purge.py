"""TERMINATED workspaces and clusters are deleted once ``terminated_retention`` has
passed (ops/purge.py), on SQLite and on PostgreSQL; what outlives them (usage, site
events) stays readable, and what names them does not break."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.cli.ws import main as ws_main
from workspace.client import Client
from workspace.codec import events as codec_events
from workspace.domain.events import EventFilter
from workspace.ops import purge
from workspace.store import Cluster, Workspace
from workspace.v1 import clusters_pb2, workspaces_pb2

MONTH = 31 * 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    kw = {}
    if request.param == "postgresql":
        kw["database_url"] = request.getfixturevalue("pg_db")
    s = Site(tmp_path, **kw)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1")
        yield s
    finally:
        s.close()


def ended(site: Site, **kw: object) -> str:
    w = site.stubs.create(**kw)
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    return w.id


def rows(site: Site) -> tuple[set[str], set[str]]:
    assert site.service is not None
    with site.service.env.store.read() as s:
        ws = {w.id for w in s.query(Workspace)}
        cs = {c.id for c in s.query(Cluster)}
    return ws, cs


def test_terminated_rows_go_after_the_retention_and_what_names_them_still_works(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.service is not None
    env = site.service.env
    old = ended(site, name="old", request_id="req-1")
    held = ended(site, name="held")
    live = site.stubs.create(name="live")
    site.stubs.wait_state(live.id, WS.WORKSPACE_STATE_RUNNING)
    c = site.stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="c", members=[clusters_pb2.ClusterMember(role="w", image="img", count=2)]
        )
    )
    for m in site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id)).members:
        site.stubs.wait_state(m.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.clusters.DestroyCluster(clusters_pb2.ClusterRef(id=c.id))
    members = {
        m.id for m in site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id)).members
    }
    for m in members:
        site.stubs.wait_state(m, WS.WORKSPACE_STATE_TERMINATED)
    # What a node has not confirmed gone is held (ops/lifecycle.py held_on): it stays.
    with env.store.write() as s:
        row = s.get(Workspace, held)
        assert row is not None
        row.claimed_cpus = 1
    # A page of the list was read before the purge.
    first = site.stubs.ws.ListWorkspaces(
        workspaces_pb2.ListWorkspacesRequest(include_terminated=True, page_size=1)
    )
    assert [w.id for w in first.workspaces] == [old] and first.next_page_token

    assert purge.purge(env) == (0, 0)  # nothing has been TERMINATED for a month yet
    later = dataclasses.replace(env, clock=lambda: time.time() + MONTH)
    assert purge.purge(later) == (3, 1)
    ws_rows, cluster_rows = rows(site)
    assert ws_rows == {held, live.id}
    assert cluster_rows == set()
    kept = dataclasses.replace(
        env,
        clock=lambda: time.time() + 10 * MONTH,
        cfg=dataclasses.replace(env.cfg, terminated_retention="forever"),
    )
    assert purge.purge(kept) == (0, 0)

    # `ws show` of a purged one: NOT_FOUND, saying why.
    with pytest.raises(grpc.RpcError) as e:
        site.stubs.get(old)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "terminated_retention" in str(e.value.details())
    capsys.readouterr()
    assert ws_main(["--service", site.address, "show", "old"]) != 0
    assert "deleted after the site's terminated_retention" in capsys.readouterr().err
    # `ws events` of it: the same answer; the admin's stream of its kept events works.
    assert ws_main(["--service", site.address, "events", old]) != 0
    assert "terminated_retention" in capsys.readouterr().err
    req = codec_events.watch_request_to_proto(0.0, False, EventFilter(workspace=old))
    kinds = {codec_events.event_from_proto(p).kind for p in site.stubs.admin.WatchEvents(req)}
    assert {"workspace.created", "workspace.state"} <= kinds
    # Its usage is still billed.
    with Client(site.address) as client:
        usage = {r.key: r for r in client.get_usage(all_users=True).rows}
    assert old in usage and usage[old].name == "old"
    assert members <= set(usage)
    # The page token read before goes on, without the purged rows.
    rest = site.stubs.ws.ListWorkspaces(
        workspaces_pb2.ListWorkspacesRequest(
            include_terminated=True, page_size=10, page_token=first.next_page_token
        )
    )
    assert [w.id for w in rest.workspaces] == [held, live.id]
    # A create retried with the purged one's request id after the retention is a new
    # request (a request id is remembered while its workspace is kept).
    again = site.stubs.create(name="old", request_id="req-1")
    assert again.id != old
    site.stubs.wait_state(again.id, WS.WORKSPACE_STATE_RUNNING)
    # And the cluster is gone as a cluster is: NOT_FOUND.
    with pytest.raises(grpc.RpcError) as e:
        site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_live_clusters_ended_member_is_kept(site: Site) -> None:
    """A live cluster's state is read from its members, the ended ones too: they stay
    while it lives."""
    assert site.service is not None
    c = site.stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="k", members=[clusters_pb2.ClusterMember(role="w", image="img", count=2)]
        )
    )
    got = site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id))
    for m in got.members:
        site.stubs.wait_state(m.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.clusters.ScaleCluster(clusters_pb2.ScaleClusterRequest(id=c.id, role="w", count=1))
    gone = [
        m.id
        for m in site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id)).members
        if m.state != WS.WORKSPACE_STATE_RUNNING
    ]
    assert len(gone) == 1
    site.stubs.wait_state(gone[0], WS.WORKSPACE_STATE_TERMINATED)
    later = dataclasses.replace(site.service.env, clock=lambda: time.time() + MONTH)
    assert purge.purge(later) == (0, 0)
    assert gone[0] in rows(site)[0]
    assert (
        site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id)).state
        == clusters_pb2.CLUSTER_STATE_RUNNING
    )


def test_the_leaders_housekeeping_deletes_them(tmp_path: Path) -> None:
    """The service's own pass (at start, then every few minutes) applies the key."""
    site = Site(tmp_path, terminated_retention="1s")
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        old = ended(site, name="old")
        assert site.service is not None
        wait_for(lambda: site.service.env.clock() > updated(site, old) + 1, what="a second")
        site.stop_service()
        site.start_service()  # the first pass runs at start
        wait_for(lambda: old not in rows(site)[0], what="the TERMINATED row to be deleted")
    finally:
        site.close()


def updated(site: Site, wid: str) -> float:
    assert site.service is not None
    with site.service.env.store.read() as s:
        row = s.get(Workspace, wid)
        assert row is not None
        return row.updated_at
