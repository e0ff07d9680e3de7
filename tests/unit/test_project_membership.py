"""A certificate may name projects; only those an admin made take workspaces (a real
SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.tenancy import ProjectSpec
from workspace.errors import NotFound, PermissionDenied
from workspace.identity import Identity, Kind
from workspace.ops import clusters, create, projects, queries
from workspace.store import Project


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path)
    with s.store.write() as tx:
        tx.add(Project(name="physics", quota_instances=1))
    return s


def user(*projects: str) -> Identity:
    return Identity(Kind.USER, "bob", projects=projects)


def test_a_project_no_admin_made_takes_nothing(site: Site) -> None:
    """`ws-admin pki issue user bob --project nonexist` once gave bob a project without
    any quota: every create in it went through, unmetered."""
    env = site.core.env
    asked = CreateRequest(CreateSpec(image="img", name="b1"), project="nonexist")
    with pytest.raises(NotFound, match="project 'nonexist' does not exist"):
        create.create(env, user("nonexist"), asked)
    # Asked for implicitly (the certificate's only project), the same.
    with pytest.raises(NotFound, match="named by your certificate, does not exist"):
        create.create(env, user("nonexist"), CreateRequest(CreateSpec(image="img", name="b2")))
    members = (MemberSpec(role="w", image="img"),)
    with pytest.raises(NotFound, match="does not exist"):
        clusters.create(env, user("nonexist"), ClusterRequest("c", members, project="nonexist"))
    assert site.workspaces() == []
    # A project that exists works, and its quota holds.
    made = create.create(env, user("physics"), CreateRequest(CreateSpec(image="img", name="p1")))
    assert made.project == "physics"
    assert [w.name for w in site.workspaces()] == ["p1"]


def test_quota_shows_only_projects_that_exist(site: Site) -> None:
    """`ws quota` listed a certificate's project no admin made, as if it had no limits."""
    env = site.core.env
    assert projects.quotas(env, user("nonexist")) == []
    shown = projects.quotas(env, user("physics", "nonexist"))
    assert [(u.project, u.limits.instances) for u in shown] == [("physics", 1)]


def test_whoami_names_only_projects_that_exist(site: Site) -> None:
    """`ws whoami` (WhoAmI) named a certificate's project no admin made among the
    caller's projects: a create in it is refused (NotFound), and `ws quota` leaves it
    out. It names those that exist, certificate's and member rows' alike."""
    env = site.core.env
    assert queries.caller(env, user("nonexist")).projects == ()
    projects.create_project(env, ProjectSpec("chemistry"))
    projects.add_user(env, "chemistry", "bob")
    me = queries.caller(env, user("physics", "nonexist"))
    assert (me.name, me.projects) == ("bob", ("chemistry", "physics"))


def in_physics(name: str) -> CreateRequest:
    return CreateRequest(CreateSpec(image="img", name=name), project="physics")


def remake_physics(site: Site) -> None:
    """physics is deleted a minute on, and made again a minute later."""
    env = site.core.env
    site.clock.now += 60
    projects.delete_project(env, "physics")
    site.clock.now += 60
    projects.create_project(env, ProjectSpec("physics"))
    site.clock.now += 60


def test_a_certificate_of_a_deleted_project_joins_not_the_one_made_again(site: Site) -> None:
    """The admin deleted physics and made it again to start afresh, but bob's
    certificate, issued for the old physics, made him a member of the new one."""
    env = site.core.env
    old = replace(user("physics"), issued_at=site.clock.now)
    remake_physics(site)
    projects.add_user(env, "physics", "carol")
    carol = create.create(env, "carol", in_physics("c1"))  # a workspace of the new one
    with pytest.raises(PermissionDenied, match="issued before that project was deleted") as e:
        create.create(env, old, in_physics("b1"))
    assert "Get a new certificate" in e.value.message
    assert "ws-admin project add-user physics bob" in e.value.message
    # Not named: the certificate's only project is refused alike, not left out silently.
    with pytest.raises(PermissionDenied, match="Get a new certificate"):
        create.create(env, old, CreateRequest(CreateSpec(image="img", name="b2")))
    with pytest.raises(PermissionDenied, match="Get a new certificate"):
        projects.quotas(env, old, project="physics")
    assert projects.quotas(env, old) == []
    assert queries.list_all(env, old, include_terminated=True) == []
    with pytest.raises(NotFound):
        queries.get(env, old, carol.id)
    assert [w.name for w in site.workspaces()] == ["c1"]
    # A certificate issued after the project was made again makes a member of it.
    new = replace(old, issued_at=site.clock.now)
    assert create.create(env, new, in_physics("b3")).project == "physics"
    assert queries.get(env, new, carol.id).id == carol.id


def test_a_member_row_made_since_still_makes_the_old_certificate_a_member(site: Site) -> None:
    """Membership the store grants after the project was made again is the admin's word
    on the new project: it holds whatever certificate bob calls with."""
    env = site.core.env
    old = replace(user("physics"), issued_at=site.clock.now)
    remake_physics(site)
    projects.add_user(env, "physics", "bob")
    assert create.create(env, old, in_physics("b1")).project == "physics"
    assert [u.project for u in projects.quotas(env, old)] == ["physics"]


def test_a_certificate_issued_while_the_project_was_gone_joins_it_when_made(
    site: Site,
) -> None:
    """As for a project never made yet (docs/security.md: issue, then `project create`),
    a certificate issued after the deletion names the project made next; one issued in
    the second of the deletion too (certificates carry whole seconds)."""
    env = site.core.env
    site.clock.now += 60
    projects.delete_project(env, "physics")
    same_second = replace(user("physics"), issued_at=float(int(site.clock.now)))
    site.clock.now += 0.5
    between = replace(user("physics"), issued_at=site.clock.now)
    site.clock.now += 60
    projects.create_project(env, ProjectSpec("physics"))
    assert create.create(env, between, in_physics("b1")).project == "physics"
    assert create.create(env, same_second, in_physics("b2")).project == "physics"
    # The second before the deletion is the old project's.
    before = replace(user("physics"), issued_at=same_second.issued_at - 1)
    with pytest.raises(PermissionDenied, match="Get a new certificate"):
        create.create(env, before, in_physics("b3"))


def test_a_stranger_is_not_told_which_projects_exist(site: Site) -> None:
    """`ws create --project chem` by a user of no project was refused with "you are not
    a member of project 'chem'", `--project nope` with "project 'nope' does not exist":
    trying names showed anyone which projects the site has. Both say the same now; an
    admin, and a holder of a certificate naming the project, are still told it is not
    there."""
    env = site.core.env
    carol = Identity(Kind.USER, "carol")
    for name in ("physics", "nope"):
        said = f"^you are not a member of project '{name}'$"
        with pytest.raises(PermissionDenied, match=said):
            asked = CreateRequest(CreateSpec(image="img", name="c"), project=name)
            create.create(env, carol, asked)
        with pytest.raises(PermissionDenied, match=said):
            projects.quotas(env, carol, project=name)
    admin = Identity(Kind.USER, "root", admin=True)
    with pytest.raises(NotFound, match="project 'nope' does not exist"):
        projects.quotas(env, admin, project="nope")
    with pytest.raises(NotFound, match="project 'nope' does not exist"):
        projects.quotas(env, user("nope"), project="nope")
    assert site.workspaces() == []
