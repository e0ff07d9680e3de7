"""Usage and project lifetimes: a project deleted and made again under the same name is
a new project; its members do not see the old one's usage (a real SQLite store, the
operations, an injected clock; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.states import Op
from workspace.domain.tenancy import ProjectSpec
from workspace.domain.usage import Grouping
from workspace.errors import NotFound
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import clusters, create, projects, queries, usage

HOUR = 3600.0
RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path, cpus=8, memory_mib=16384)
    projects.create_project(s.core.env, ProjectSpec("physics"))
    projects.add_user(s.core.env, "physics", "bob")
    return s


def run(site: Site, name: str, owner: str, project: str, cpus: int = 2) -> str:
    spec = CreateSpec(image="img", name=name, cpus=cpus, memory_mib=1024)
    who = Identity(Kind.USER, owner)
    wid = create.create(site.core.env, who, CreateRequest(spec, project=project)).id
    site.report(wid, RUNNING)
    return wid


def core_hours(site: Site, who: str | Identity, by: Grouping = Grouping.USER) -> dict[str, float]:
    return {r.key: r.core_hours for r in usage.report_for(site.core.env, who, by=by).rows}


def recreate(site: Site) -> float:
    """bob ran 2 vCPUs for 3 h in physics; the project is deleted and made again, with
    carol its only member. Returns when it was made again."""
    env = site.core.env
    old = run(site, "old", "bob", "physics")
    site.clock.now += 3 * HOUR
    site.destroy(old, "bob")
    site.clock.now += HOUR
    projects.delete_project(env, "physics")
    site.clock.now += HOUR
    projects.create_project(env, ProjectSpec("physics"))
    projects.add_user(env, "physics", "carol")
    made = site.clock.now
    site.clock.now += HOUR
    return made


def test_a_recreated_project_shows_its_members_none_of_the_old_ones_usage(site: Site) -> None:
    """Usage was found by project name: carol, member of the new physics, saw bob's
    core-hours in the old one (a tenancy leak)."""
    recreate(site)
    assert core_hours(site, "carol") == {}
    assert core_hours(site, "carol", Grouping.PROJECT) == {}
    assert core_hours(site, "carol", Grouping.WORKSPACE) == {}
    # A certificate naming physics gives no more.
    assert core_hours(site, Identity(Kind.USER, "dave", projects=("physics",))) == {}
    # The new project's own use is seen by its members.
    run(site, "new", "carol", "physics", cpus=1)
    site.clock.now += 2 * HOUR
    projects.add_user(site.core.env, "physics", "erin")
    assert core_hours(site, "erin") == pytest.approx({"carol": 2.0})
    assert core_hours(site, "erin", Grouping.PROJECT) == pytest.approx({"physics": 2.0})


def test_the_old_projects_usage_stays_its_owners_and_the_admins(site: Site) -> None:
    made = recreate(site)
    # bob still sees his own past use (he is in no project now).
    assert core_hours(site, "bob") == pytest.approx({"bob": 6.0})
    # An admin bills the old project: everything before the new one was made.
    env = site.core.env
    old = usage.report(env, None, until=made, by=Grouping.PROJECT).rows
    assert {r.key: r.core_hours for r in old} == pytest.approx({"physics": 6.0})
    new = usage.report(env, None, since=made, by=Grouping.PROJECT).rows
    assert new == ()


def test_an_admins_report_over_a_re_creation_bills_old_and_new_apart(site: Site) -> None:
    """`ws-admin usage --by project` over a window spanning the re-creation added the old
    physics's core-hours to the new one's, in one row."""
    made = recreate(site)
    deleted = made - HOUR  # recreate() deletes an hour before it makes it again
    run(site, "new", "carol", "physics", cpus=1)
    site.clock.now += 2 * HOUR
    env = site.core.env
    rows = usage.report(env, None, by=Grouping.PROJECT).rows
    assert [(r.key, r.project_deleted_at) for r in rows] == [
        ("physics", deleted),  # the old one first
        ("physics", 0.0),
    ]
    assert [r.core_hours for r in rows] == pytest.approx([6.0, 2.0])
    by_workspace = usage.report(env, None, by=Grouping.WORKSPACE).rows
    assert sorted((r.name, r.project_deleted_at) for r in by_workspace) == [
        ("new", 0.0),
        ("old", deleted),
    ]
    # bob, no member of either now, sees his own in the old one, as the old one.
    (mine,) = usage.report_for(env, "bob", by=Grouping.PROJECT).rows
    assert (mine.key, mine.project_deleted_at, mine.core_hours) == ("physics", deleted, 6.0)
    # Grouped by user, nothing changes.
    users = usage.report(env, None, by=Grouping.USER).rows
    assert {r.key: r.core_hours for r in users} == pytest.approx({"bob": 6.0, "carol": 2.0})


def test_pages_of_a_report_give_the_old_and_the_new_project_once_each(site: Site) -> None:
    """The old and the new physics are two rows of one key: a page ending on the old one
    goes on with the new one (the page token names the row's place, not only its key)."""
    made = recreate(site)
    run(site, "new", "carol", "physics", cpus=1)
    site.clock.now += 2 * HOUR
    env = site.core.env
    got: list[tuple[str, float]] = []
    token = ""
    while True:
        page = usage.report(env, None, by=Grouping.PROJECT, page=usage.Page(1, token))
        got += [(r.key, r.project_deleted_at) for r in page.rows]
        token = page.next_page_token
        if not token:
            break
    assert got == [("physics", made - HOUR), ("physics", 0.0)]


def test_a_deleted_project_shows_its_former_members_only_their_own(site: Site) -> None:
    """A certificate still naming a deleted project shows no one else's use in it."""
    projects.add_user(site.core.env, "physics", "alice")
    wid = run(site, "old", "bob", "physics")
    site.clock.now += HOUR
    site.destroy(wid, "bob")
    projects.delete_project(site.core.env, "physics")
    assert core_hours(site, Identity(Kind.USER, "alice", projects=("physics",))) == {}
    assert core_hours(site, Identity(Kind.USER, "bob", projects=("physics",))) == pytest.approx(
        {"bob": 2.0}
    )


def test_a_removed_member_sees_only_their_own_use_in_the_project(site: Site) -> None:
    projects.add_user(site.core.env, "physics", "alice")
    run(site, "a", "alice", "physics")
    run(site, "b", "bob", "physics", cpus=1)
    site.clock.now += HOUR
    assert core_hours(site, "bob") == pytest.approx({"alice": 2.0, "bob": 1.0})
    projects.remove_user(site.core.env, "physics", "bob")
    assert core_hours(site, "bob") == pytest.approx({"bob": 1.0})


def test_a_recreated_project_lists_its_members_none_of_the_old_ones_workspaces(
    site: Site,
) -> None:
    """The old project's terminated workspaces kept its name: `ws list --all` and
    `ws show ID` gave carol, member of the new physics, bob's old workspace."""
    env = site.core.env
    old = run(site, "old", "bob", "physics")
    site.clock.now += HOUR
    site.destroy(old, "bob")
    projects.delete_project(env, "physics")
    site.clock.now += HOUR
    projects.create_project(env, ProjectSpec("physics"))
    projects.add_user(env, "physics", "carol")
    projects.add_user(env, "physics", "bob")
    new = run(site, "new", "bob", "physics")
    assert [w.id for w in queries.list_all(env, "carol", include_terminated=True)] == [new]
    with pytest.raises(NotFound):
        queries.get(env, "carol", old)
    assert queries.get(env, "carol", new).id == new
    # bob's own stay his; an admin sees both.
    assert {w.id for w in queries.list_all(env, "bob", include_terminated=True)} == {old, new}
    admin = Identity(Kind.USER, "root", admin=True)
    assert queries.get(env, admin, old).id == old


def test_a_recreated_project_lists_its_members_none_of_the_old_ones_clusters(
    site: Site,
) -> None:
    env = site.core.env
    members = (MemberSpec(role="head", image="img"),)
    bob = Identity(Kind.USER, "bob")
    c = clusters.create(env, bob, ClusterRequest("c1", members, project="physics"))
    site.report(c.members[0].id, RUNNING)
    clusters.operate(env, bob, "c1", Op.DESTROY)
    site.report(c.members[0].id, nodes_pb2.OBSERVED_STATE_ABSENT)
    site.clock.now += HOUR
    projects.delete_project(env, "physics")
    projects.create_project(env, ProjectSpec("physics"))
    projects.add_user(env, "physics", "carol")
    assert clusters.list_clusters(env, "carol", include_terminated=True) == []
    with pytest.raises(NotFound):
        clusters.get(env, "carol", c.id)
    assert [v.id for v in clusters.list_clusters(env, "bob", include_terminated=True)] == [c.id]
