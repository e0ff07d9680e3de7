"""A cluster grow that waits for capacity is placed only while whoever asked for it may
still make it: taken out of the cluster's project, or their certificate revoked, the
members it added are withdrawn when capacity comes, with a site event saying why (a real
SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.domain.tenancy import ProjectSpec
from workspace.identity import Identity, Kind
from workspace.ops import cluster_scale, clusters, projects, queue
from workspace.store import Cluster, EventRow
from workspace.store.mapping import member_specs

ALICE = Identity(Kind.USER, "alice")
# bob calls with a certificate (serial 0xb0b) and is a recorded member of physics.
BOB = Identity(Kind.USER, "bob", serial=0xB0B)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path)
    env = s.core.env
    projects.create_project(env, ProjectSpec("physics"))
    projects.add_user(env, "physics", "alice")
    projects.add_user(env, "physics", "bob")
    return s


def queued_grow(site: Site) -> tuple[str, str]:
    """alice's cluster c (one w member), a workspace of alice's that leaves no room, and
    bob's grow of w to 2 waiting for capacity. Returns the cluster's id and the hog's."""
    env = site.core.env
    members = (MemberSpec(role="w", image="img", cpus=1, memory_mib=1024),)
    c = clusters.create(env, ALICE, ClusterRequest("c", members, project="physics"))
    hog = site.create("alice", name="hog", memory_mib=6000, project="physics")
    _, result = cluster_scale.scale(env, BOB, c.id, "w", 2, wait_s=600)
    assert result.added == ("c-w-1",) and "waiting for capacity" in result.message
    return c.id, hog.id


def grown(site: Site) -> tuple[str, str]:
    (w,) = [w for w in site.workspaces() if w.name == "c-w-1"]
    return w.state, w.reason


def count_of(site: Site, cid: str) -> int:
    with site.store.read() as s:
        c = s.get(Cluster, cid)
        assert c is not None
        return member_specs(c)[0].count


def refusals(site: Site) -> list[tuple[str, str]]:
    with site.store.read() as s:
        q = select(EventRow).where(EventRow.kind == "workspace.refused")
        return [(e.state, e.reason) for e in s.execute(q).scalars()]


def test_a_queued_grow_is_placed_while_its_asker_may_make_it(site: Site) -> None:
    cid, hog = queued_grow(site)
    site.destroy(hog, "alice")
    assert queue.process(site.core.env) == 1
    assert grown(site)[0] == "SCHEDULED"
    assert count_of(site, cid) == 2
    assert refusals(site) == []


def test_a_queued_grow_of_a_member_taken_out_of_the_project_is_withdrawn(site: Site) -> None:
    """bob, taken out of physics while his grow waited, still got its member placed and
    charged to physics when capacity came."""
    cid, hog = queued_grow(site)
    projects.remove_user(site.core.env, "physics", "bob")
    site.destroy(hog, "alice")
    assert queue.process(site.core.env) == 0
    state, reason = grown(site)
    assert state == "TERMINATED"
    assert "user:bob, who asked for the grow, may no longer act on cluster c" in reason
    assert count_of(site, cid) == 1  # as before the grow
    ((why, said),) = refusals(site)
    assert why == "rights"
    assert said == (
        "grow of cluster c waiting for capacity (c-w-1) withdrawn: user:bob, who asked "
        "for the grow, may no longer act on cluster c"
    )
    assert queue.list_queue(site.core.env) == []


def test_a_queued_grow_asked_with_a_revoked_certificate_is_withdrawn(site: Site) -> None:
    cid, hog = queued_grow(site)
    site.destroy(hog, "alice")
    assert queue.process(site.core.env, revoked={0xB0B}) == 0
    state, reason = grown(site)
    assert state == "TERMINATED" and "has been revoked (serial 0xb0b)" in reason
    assert count_of(site, cid) == 1
    assert [why for why, _ in refusals(site)] == ["rights"]


def test_the_owners_own_queued_grow_is_withdrawn_once_out_of_the_project(site: Site) -> None:
    """The owner may still act on their cluster, but its new members are charged to a
    project they no longer belong to, which a grow made now refuses too."""
    env = site.core.env
    members = (MemberSpec(role="w", image="img", cpus=1, memory_mib=1024),)
    c = clusters.create(env, BOB, ClusterRequest("c", members, project="physics"))
    hog = site.create("alice", name="hog", memory_mib=6000, project="physics")
    cluster_scale.scale(env, BOB, c.id, "w", 2, wait_s=600)
    projects.remove_user(env, "physics", "bob")
    site.destroy(hog.id, "alice")
    assert queue.process(env) == 0
    assert grown(site)[0] == "TERMINATED"
    ((_, said),) = refusals(site)
    assert said.endswith("who asked for the grow, is no longer a member of project physics")
