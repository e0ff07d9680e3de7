"""A certificate may name projects; only those an admin made take workspaces (a real
SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.errors import NotFound
from workspace.identity import Identity, Kind
from workspace.ops import clusters, create, projects
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
