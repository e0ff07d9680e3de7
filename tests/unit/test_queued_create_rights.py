"""A create waiting for capacity (a lone workspace's, or a cluster's) is placed only while
whoever asked for it may still make it: their certificate revoked, or taken out of the
project it was made in, it FAILS when capacity comes, with a site event saying why (a
real SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from sqlalchemy import select

from tests.unit.test_queued_grow_rights import BOB, site
from tests.unit.test_request_validation import Site
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.identity import Identity, Kind
from workspace.ops import clusters, projects, queue
from workspace.store import Cluster, EventRow

__all__ = ["site"]  # the fixture, used by name


def queued_job(site: Site, who: Identity = BOB) -> str:
    """alice's hog leaves no room; ``who``'s job waits for capacity in physics. Returns
    the hog's id."""
    hog = site.create("alice", name="hog", memory_mib=6000, project="physics")
    job = site.create(who, name="job", memory_mib=4000, project="physics", wait_for_capacity_s=600)  # type: ignore[arg-type]
    assert job.node == "" and "waiting for capacity" in job.reason
    return hog.id


def job(site: Site) -> tuple[str, str]:
    (w,) = [w for w in site.workspaces() if w.name == "job"]
    return w.state, w.reason


def refusals(site: Site) -> list[tuple[str, str, str, str]]:
    with site.store.read() as s:
        q = select(EventRow).where(EventRow.kind == "workspace.refused")
        return [(e.state, e.workspace_name, e.cluster, e.reason) for e in s.execute(q).scalars()]


def test_a_queued_create_is_placed_while_its_asker_may_make_it(site: Site) -> None:
    hog = queued_job(site)
    site.destroy(hog, "alice")
    assert queue.process(site.core.env, revoked={0xDEAD}) == 1
    assert job(site)[0] == "SCHEDULED"
    assert refusals(site) == []


def test_a_queued_create_of_a_member_taken_out_of_the_project_fails(site: Site) -> None:
    """bob, taken out of physics while his create waited, still got a VM started and
    charged to physics when capacity came (remove-user keeps only live workspaces)."""
    hog = queued_job(site)
    projects.remove_user(site.core.env, "physics", "bob")
    site.destroy(hog, "alice")
    assert queue.process(site.core.env) == 0
    why = "user:bob, who asked for it, is no longer a member of project physics"
    assert job(site) == ("FAILED", f"not placed: {why}")
    assert refusals(site) == [
        ("rights", "job", "", f"create of workspace job waiting for capacity failed: {why}")
    ]
    assert queue.list_queue(site.core.env) == []


def test_a_queued_create_asked_with_a_revoked_certificate_fails(site: Site) -> None:
    hog = queued_job(site)
    site.destroy(hog, "alice")
    assert queue.process(site.core.env, revoked={0xB0B}) == 0
    state, reason = job(site)
    assert state == "FAILED" and reason.endswith("has been revoked (serial 0xb0b)")
    assert [r[0] for r in refusals(site)] == ["rights"]


def test_a_member_by_certificate_only_is_still_one(site: Site) -> None:
    """The projects the certificate named are kept with the request: carol, in physics
    only by her certificate, gets hers placed."""
    carol = Identity(Kind.USER, "carol", projects=("physics",), serial=0xCA401)
    hog = queued_job(site, carol)
    site.destroy(hog, "alice")
    assert queue.process(site.core.env) == 1
    assert job(site)[0] == "SCHEDULED"


def test_a_queued_cluster_create_of_a_member_taken_out_of_the_project_fails(
    site: Site,
) -> None:
    env = site.core.env
    hog = site.create("alice", name="hog", memory_mib=6000, project="physics")
    members = (MemberSpec(role="w", image="img", cpus=1, memory_mib=2000, count=2),)
    c = clusters.create(
        env, BOB, ClusterRequest("c", members, project="physics", wait_for_capacity_s=600)
    )
    projects.remove_user(env, "physics", "bob")
    site.destroy(hog.id, "alice")
    assert queue.process(env) == 0
    why = "user:bob, who asked for it, is no longer a member of project physics"
    states = {w.name: (w.state, w.reason) for w in site.workspaces() if w.cluster == c.id}
    assert states == {n: ("FAILED", f"not placed: {why}") for n in ("c-w-0", "c-w-1")}
    with site.store.read() as s:
        row = s.get(Cluster, c.id)
        assert row is not None and row.state == "FAILED"
    assert refusals(site) == [
        ("rights", "", c.id, f"create of cluster c waiting for capacity failed: {why}")
    ]
    assert queue.list_queue(env) == []
