"""A batch system tells its own workspaces and clusters from its project colleagues'
(docs/api.md, "A batch system's jobs"): ``WhoAmI`` says who the service takes the caller
for, and ``mine`` on ListWorkspaces and ListClusters keeps only the caller's own, on
SQLite and on PostgreSQL, through the raw stubs over mutual TLS. A client against a
service older than ``mine`` keeps to the caller's own all the same, or refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import SitePki, Stubs, TlsSite
from workspace import errors
from workspace.cli.ws import main as ws_main
from workspace.client import Client
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TlsSite]:
    kw: dict[str, Any] = {}
    if request.param == "postgresql":
        kw["database_url"] = request.getfixturevalue("pg_db")
    s = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), **kw)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        s.add_agent("node1", cpus=8, memory_mib=8192)
        projects = projects_pb2_grpc.ProjectsStub(s.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user="bob"))
        yield s
    finally:
        s.close()


def _make(stubs: Stubs, who: str) -> None:
    """A workspace ``same`` and a cluster ``job`` of ``who``, named as the other's."""
    stubs.create(name="same", image="img", cpus=1, memory_mib=64, project="physics")
    cl = clusters_pb2_grpc.ClustersStub(stubs.channel)
    req = clusters_pb2.CreateClusterRequest(name="job", project="physics")
    req.members.add(role="c1", image="img", cpus=1, memory_mib=64, count=1)
    cl.CreateCluster(req)


def _workspaces(stubs: Stubs, **kw: Any) -> tuple[list[tuple[str, str]], bool]:
    """Every page of ListWorkspaces(**kw), one workspace a page: (name, owner) of each,
    and whether every page said it kept to ``mine``."""
    out: list[tuple[str, str]] = []
    kept = True
    req = workspaces_pb2.ListWorkspacesRequest(page_size=1, **kw)
    while True:
        resp = stubs.ws.ListWorkspaces(req)
        out += [(w.name, w.owner) for w in resp.workspaces]
        kept = kept and resp.mine
        req.page_token = resp.next_page_token
        if not req.page_token:
            return sorted(out), kept


def _clusters(stubs: Stubs, **kw: Any) -> tuple[list[tuple[str, str]], bool]:
    resp = clusters_pb2_grpc.ClustersStub(stubs.channel).ListClusters(
        clusters_pb2.ListClustersRequest(**kw)
    )
    return sorted((c.name, c.owner) for c in resp.clusters), resp.mine


def test_mine_lists_only_the_callers_own_and_whoami_names_them(site: TlsSite) -> None:
    alice = site.identity("alice", projects=("physics",))
    bob = site.identity("bob")  # a member by the service's record, not his certificate
    _make(alice, "alice")
    _make(bob, "bob")
    # Without mine each sees both (a colleague's same-named workspace among them).
    both = [("job-c1-0", "alice"), ("job-c1-0", "bob"), ("same", "alice"), ("same", "bob")]
    assert _workspaces(alice) == (both, False)
    assert _clusters(alice) == ([("job", "alice"), ("job", "bob")], False)
    # With it, each only their own, page after page.
    assert _workspaces(alice, mine=True) == ([("job-c1-0", "alice"), ("same", "alice")], True)
    assert _workspaces(bob, mine=True) == ([("job-c1-0", "bob"), ("same", "bob")], True)
    assert _clusters(bob, mine=True) == ([("job", "bob")], True)
    # An admin's all_users with mine: only the admin's own (none here).
    assert _workspaces(site.stubs, all_users=True, mine=True) == ([], True)
    assert _clusters(site.stubs, all_users=True, mine=True) == ([], True)
    # A user's all_users stays refused, mine or not.
    with pytest.raises(grpc.RpcError) as info:
        alice.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(all_users=True, mine=True))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

    me = alice.ws.WhoAmI(workspaces_pb2.WhoAmIRequest())
    assert (me.user, me.admin, list(me.projects)) == ("alice", False, ["physics"])
    me = bob.ws.WhoAmI(workspaces_pb2.WhoAmIRequest())
    assert (me.user, me.admin, list(me.projects)) == ("bob", False, ["physics"])
    me = site.stubs.ws.WhoAmI(workspaces_pb2.WhoAmIRequest())
    assert (me.user, me.admin) == (site.cfg.default_owner, True)

    # The Python client: the same, and whoami.
    with Client(site.address, site.pki.tls(site.pki.user("bob"))) as c:
        assert c.whoami().user == "bob"
        assert {(w.name, w.owner) for w in c.list_workspaces(mine=True)} == {
            ("same", "bob"),
            ("job-c1-0", "bob"),
        }
        assert [(x.name, x.owner) for x in c.list_clusters(mine=True)] == [("job", "bob")]


class _OlderService:
    """A ListWorkspaces/ListClusters stub that drops ``mine``, as a service older than it
    does (it reads no field it does not know and answers without the echo)."""

    def __init__(self, stub: Any, method: str) -> None:
        self.call = getattr(stub, method)

    def __call__(self, request: Any, **kw: Any) -> Any:
        request = type(request).FromString(request.SerializeToString())
        request.mine = False
        return self.call(request, **kw)


def test_a_client_against_an_older_service_keeps_to_its_own_or_refuses(
    site: TlsSite,
) -> None:
    alice = site.identity("alice", projects=("physics",))
    _make(alice, "alice")
    _make(site.identity("bob"), "bob")
    with Client(site.address, site.pki.tls(site.pki.user("bob"))) as c:
        c._workspaces.ListWorkspaces = _OlderService(c._workspaces, "ListWorkspaces")  # type: ignore[method-assign]
        c._clusters.ListClusters = _OlderService(c._clusters, "ListClusters")  # type: ignore[method-assign]
        assert len(c.list_workspaces()) == 4  # the service's whole answer, alice's too
        # mine: the owner its certificate names (bob), not alice's same-named ones.
        assert {(w.name, w.owner) for w in c.list_workspaces(mine=True)} == {
            ("same", "bob"),
            ("job-c1-0", "bob"),
        }
        assert [(x.name, x.owner) for x in c.list_clusters(mine=True)] == [("job", "bob")]
        # Without a certificate to read (a plaintext client): refused, never everyone's.
        c.tls = None
        with pytest.raises(errors.FailedPrecondition) as info:
            c.list_workspaces(mine=True)
        assert "runs an older release than this client" in info.value.message
        assert "cannot tell which are yours" in info.value.message


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)
def test_ws_whoami_and_list_mine(site: TlsSite, capsys: pytest.CaptureFixture[str]) -> None:
    _make(site.identity("alice", projects=("physics",)), "alice")
    _make(site.identity("bob"), "bob")
    bob = ["--service", site.address, "--identity", str(site.pki.user("bob"))]
    assert ws_main([*bob, "whoami"]) == 0
    assert capsys.readouterr().out.split() == ["user", "bob", "admin", "no", "projects", "physics"]
    assert ws_main([*bob, "whoami", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "user": "bob",
        "admin": False,
        "projects": ["physics"],
    }
    assert ws_main([*bob, "list", "--mine", "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((w["name"], w["owner"]) for w in listed) == [
        ("job-c1-0", "bob"),
        ("same", "bob"),
    ]
    assert ws_main([*bob, "cluster", "list", "--mine", "-o", "json"]) == 0
    assert [(c["name"], c["owner"]) for c in json.loads(capsys.readouterr().out)] == [
        ("job", "bob")
    ]
    assert ws_main([*bob, "list", "-o", "json"]) == 0  # without --mine: alice's too
    assert len(json.loads(capsys.readouterr().out)) == 4
