"""`ws lease extend CLUSTER`: every live member's lease, all or none (ops/cluster_leases.py),
with an injected clock over a real SQLite store. Before, a cluster's lease was extended
one member at a time (`ws lease extend mpi` was refused with a hint to do so), and a grow
or a start refused after the lease ended said to extend one member, which left the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.leases import iso_time
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.domain.states import Desired, Op
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import cluster_leases, cluster_scale, clusters, leases
from workspace.ops.unit import Env
from workspace.store import Project
from workspace.store.site_events import EventRow

HOUR = 3600
RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING
STOPPED = nodes_pb2.OBSERVED_STATE_STOPPED


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path, cpus=16, memory_mib=32768)
    with s.store.write() as tx:
        tx.add(Project(name="physics", default_lease_s=8 * HOUR, max_lease_s=72 * HOUR))
    return s


def env(site: Site) -> Env:
    return site.core.env


def cluster(site: Site, workers: int = 3, lease_s: int = HOUR, project: str = "") -> list[str]:
    """Cluster c1 of alice's (a head and ``workers`` workers), running; its members' ids."""
    members = (MemberSpec(role="head", image="img"), MemberSpec("w", "img", count=workers))
    req = ClusterRequest("c1", members, lease_s=lease_s, project=project)
    who = Identity(Kind.USER, "alice", projects=(project,) if project else ())
    c = clusters.create(env(site), who, req)
    for m in c.members:
        site.report(m.id, RUNNING)
    return [m.id for m in c.members]


def ends(site: Site) -> dict[str, float]:
    return {w.name: w.lease_expires_at for w in site.workspaces()}


def lease_events(site: Site) -> list[tuple[str, str, str]]:
    """(kind, workspace name, reason) of every lease.extended event, oldest first."""
    with site.store.read() as s:
        q = select(EventRow).where(EventRow.kind == "lease.extended").order_by(EventRow.id)
        return [(e.kind, e.workspace_name, e.reason) for e in s.execute(q).scalars()]


def test_every_member_is_extended_with_an_event_each_and_one_for_the_cluster(
    site: Site,
) -> None:
    cluster(site)
    end = site.clock.now + HOUR
    shown = cluster_leases.extend(env(site), "alice", "c1", 4 * HOUR)
    assert [m.lease_expires_at for m in shown.members] == [end + 4 * HOUR] * 4
    assert set(ends(site).values()) == {end + 4 * HOUR}
    events = lease_events(site)
    assert sorted(name for _, name, _ in events if name) == [
        "c1-head-0",
        "c1-w-0",
        "c1-w-1",
        "c1-w-2",
    ]
    assert [r for _, name, r in events if not name] == [
        f"until {iso_time(end + 4 * HOUR)} (4 member(s))"
    ]


def test_one_member_that_cannot_be_extended_refuses_the_whole(site: Site) -> None:
    """All or none: the refusal names the member and the project's maximum."""
    cluster(site, lease_s=HOUR, project="physics")
    leases.extend(env(site), "alice", "c1-w-1", 70 * HOUR)  # 71 h of the 72 h now
    before = ends(site)
    with pytest.raises(InvalidArgument) as info:
        cluster_leases.extend(env(site), "alice", "c1", 2 * HOUR)
    said = info.value.message
    assert said.startswith("cannot extend the lease of cluster c1, nor of any of its members: ")
    assert "workspace c1-w-1" in said and "project physics's maximum lease of 3d" in said
    assert "at most 1h" in said
    assert ends(site) == before  # none moved
    assert len(lease_events(site)) == 1  # the single member's extend only
    cluster_leases.extend(env(site), "alice", "c1", HOUR)  # within it: all of them
    assert ends(site)["c1-head-0"] == before["c1-head-0"] + HOUR
    assert ends(site)["c1-w-1"] == before["c1-w-1"] + HOUR


def test_an_extend_beyond_the_sites_maximum_is_refused_naming_it(site: Site) -> None:
    cluster(site, workers=1)
    with pytest.raises(InvalidArgument, match=r"c1-head-0 .*limits.max_lease_s"):
        cluster_leases.extend(env(site), "alice", "c1", 20 * 365 * 24 * HOUR)


def test_destroyed_members_are_left_and_a_cluster_without_a_lease_refused(site: Site) -> None:
    cluster(site, workers=2)
    cluster_scale.scale(env(site), "alice", "c1", "w", 1)  # c1-w-1 is being destroyed
    before = ends(site)
    cluster_leases.extend(env(site), "alice", "c1", HOUR)
    after = ends(site)
    assert after["c1-w-1"] == before["c1-w-1"]
    assert (after["c1-head-0"], after["c1-w-0"]) == (before["c1-head-0"] + HOUR,) * 2
    with pytest.raises(InvalidArgument, match="more than 0 s"):
        cluster_leases.extend(env(site), "alice", "c1", 0)
    with pytest.raises(NotFound):
        cluster_leases.extend(env(site), "bob", "c1", HOUR)  # not bob's
    req = ClusterRequest("c2", (MemberSpec(role="head", image="img"),))
    clusters.create(env(site), "alice", req)
    with pytest.raises(FailedPrecondition, match="cluster c2 has no lease"):
        cluster_leases.extend(env(site), "alice", "c2", HOUR)
    # A bad amount is the request's fault, whatever the cluster: it was refused as c2
    # having no lease (FAILED_PRECONDITION), while a workspace's said the amount.
    for add_s in (0, -HOUR):
        with pytest.raises(InvalidArgument) as bad:
            cluster_leases.extend(env(site), "alice", "c2", add_s)
        assert bad.value.message == f"extend a lease by more than 0 s, got {add_s} s"


def test_an_ended_lease_names_the_cluster_to_extend_and_one_extend_does(site: Site) -> None:
    """A grow or a start after the lease ended said `ws lease extend c1-head-0 DURATION`
    first: that extended the head only, and the next start left every worker stopped."""
    ids = cluster(site, workers=2)
    site.clock.now += HOUR
    assert sorted(leases.check(env(site)).expired) == sorted(ids)
    for wid in ids:
        site.report(wid, STOPPED)
    with pytest.raises(FailedPrecondition) as grow:
        cluster_scale.scale(env(site), "alice", "c1", "w", 3)
    with pytest.raises(FailedPrecondition) as start:
        clusters.operate(env(site), "alice", "c1", Op.START)
    for refused in (grow, start):
        assert "`ws lease extend c1 DURATION` first" in refused.value.message
    cluster_leases.extend(env(site), "alice", "c1", HOUR)  # from now: it has ended
    assert set(ends(site).values()) == {site.clock.now + HOUR}
    clusters.operate(env(site), "alice", "c1", Op.START)
    assert {w.desired_state for w in site.workspaces()} == {Desired.RUNNING.value}
