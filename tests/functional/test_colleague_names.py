"""A name the caller has no workspace (or cluster) of, which a project colleague has:
read it by that name, but act on it (destroy, stop, ...) only by its id or OWNER/NAME.
`ws destroy web1` of a member with no web1 destroyed the colleague's (docs/design/cli.md,
"Naming a workspace or cluster"). Over mutual TLS with real user certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import WS, SitePki, TlsSite
from workspace.cli.ws import main as ws_main
from workspace.v1 import (
    clusters_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)

WS_RUNNING = common_pb2.DESIRED_STATE_RUNNING
WS_STOPPED = common_pb2.DESIRED_STATE_STOPPED
WS_TERMINATED = common_pb2.DESIRED_STATE_TERMINATED


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsSite]:
    s = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        s.add_agent("node1")
        projects = projects_pb2_grpc.ProjectsStub(s.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        for user in ("alice", "bob"):
            projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user=user))
        yield s
    finally:
        s.close()


def _as(site: TlsSite, user: str, admin: bool = False) -> list[str]:
    return ["--service", site.address, "--identity", str(site.pki.user(user, admin=admin))]


def test_a_colleagues_workspace_is_destroyed_by_id_or_owner_name_only(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = site.identity("alice", projects=("physics",))
    w = alice.create(name="web1", memory_mib=64, project="physics")
    alice.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    bob = _as(site, "bob")
    capsys.readouterr()
    # Reading by the name still finds the colleague's (bob has no web1).
    assert ws_main([*bob, "show", "web1", "-o", "json"]) == 0
    assert w.id in capsys.readouterr().out
    # Destroying or stopping by the bare name is not a guess: refused, naming it.
    for verb in ("destroy", "stop"):
        assert ws_main([*bob, verb, "web1"]) == 1
        err = capsys.readouterr().err
        assert (
            f"you have no workspace named 'web1'; not guessing someone else's to {verb}: "
            f"give its id or OWNER/NAME (alice/web1 (id {w.id}, RUNNING))"
        ) in err
        assert alice.get(w.id).desired_state == WS_RUNNING
    # The owner qualifier names it: project members may stop each other's.
    assert ws_main([*bob, "stop", "alice/web1"]) == 0
    assert alice.get(w.id).desired_state == WS_STOPPED
    assert ws_main([*bob, "show", "carol/web1"]) != 0
    assert "no workspace 'web1' of carol that you may see" in capsys.readouterr().err
    assert ws_main([*bob, "show", "alice/"]) != 0
    assert "give an id, a name, or OWNER/NAME (e.g. alice/web1)" in capsys.readouterr().err
    # Once bob has a web1 of his own, the bare name is his, to read and to act on.
    mine = site.identity("bob", projects=("physics",)).create(
        name="web1", memory_mib=64, project="physics"
    )
    assert ws_main([*bob, "destroy", "web1"]) == 0
    assert alice.get(mine.id).desired_state == WS_TERMINATED
    assert alice.get(w.id).desired_state == WS_STOPPED
    # And by id, as before.
    assert ws_main([*bob, "destroy", w.id]) == 0
    assert alice.get(w.id).desired_state == WS_TERMINATED


def test_a_colleagues_cluster_is_scaled_down_by_id_or_owner_name_only(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scale-down destroys members, as a destroy does: by a bare name, only the
    caller's own cluster. `ws cluster scale mpi --count 1` of a member with no mpi
    destroyed a colleague's workers; a grow by the name still finds it."""
    alice = site.identity("alice", projects=("physics",))
    worker = clusters_pb2.ClusterMember(role="worker", image="img", memory_mib=64, count=2)
    c = alice.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(name="mpi", members=[worker], project="physics")
    )

    def workers() -> list[str]:
        got = alice.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id))
        return sorted(
            m.name
            for m in got.members
            if m.desired_state != WS_TERMINATED and m.state != WS.WORKSPACE_STATE_TERMINATED
        )

    assert workers() == ["mpi-worker-0", "mpi-worker-1"]
    bob = _as(site, "bob")
    capsys.readouterr()
    assert ws_main([*bob, "cluster", "scale", "mpi", "--role", "worker", "--count", "1"]) == 1
    assert (
        "you have no cluster named 'mpi'; not guessing someone else's to scale down: "
        f"give its id or OWNER/NAME (alice/mpi (id {c.id}, "
    ) in capsys.readouterr().err
    assert workers() == ["mpi-worker-0", "mpi-worker-1"]  # nothing destroyed
    # A grow by the bare name is no guess at what to destroy: as before.
    assert ws_main([*bob, "cluster", "scale", "mpi", "--role", "worker", "--count", "3"]) == 0
    assert len(workers()) == 3
    # By OWNER/NAME (or id) project members may shrink each other's.
    assert ws_main([*bob, "cluster", "scale", "alice/mpi", "--role", "worker", "--count", "1"]) == 0
    assert workers() == ["mpi-worker-0"]


def _running_web1(site: TlsSite) -> tuple[str, str]:
    """alice's running web1 in project physics: (its id, the refusal a bare name of
    someone who has none gets, without the verb's end)."""
    alice = site.identity("alice", projects=("physics",))
    w = alice.create(name="web1", memory_mib=64, project="physics")
    alice.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    return w.id, f"OWNER/NAME (alice/web1 (id {w.id}, RUNNING))"


def test_an_update_or_exec_by_a_bare_name_acts_only_on_the_callers_own(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws update web1` and `ws exec web1` change what runs in web1: an admin with no
    web1 of their own changed (ran commands in) the one user's web1. By its id or
    OWNER/NAME as before; a user who is no admin, who may do neither to a colleague's, is
    told that rather than to give OWNER/NAME."""
    wid, candidates = _running_web1(site)
    alice = site.identity("alice", projects=("physics",))
    admin = _as(site, site.cfg.default_owner, admin=True)
    capsys.readouterr()
    for verb, argv in (
        ("update", ["update", "web1", "--cpu-weight", "200"]),
        ("run commands in", ["exec", "web1", "--", "true"]),
    ):
        assert ws_main([*admin, *argv]) == 1
        err = capsys.readouterr().err
        assert (
            f"you have no workspace named 'web1'; not guessing someone else's to {verb}: "
            f"give its id or {candidates}"
        ) in err
    assert alice.get(wid).limits.cpu_weight != 200
    assert ws_main([*admin, "update", "alice/web1", "--cpu-weight", "200"]) == 0
    assert alice.get(wid).limits.cpu_weight == 200
    # bob may update no one's but his own: said as before, by any name.
    bob = _as(site, "bob")
    capsys.readouterr()
    for ref in ("web1", "alice/web1"):
        assert ws_main([*bob, "update", ref, "--cpu-weight", "300"]) == 1
        err = capsys.readouterr().err
        assert "only the owner of workspace web1 (alice) or an admin may update it" in err
        assert ws_main([*bob, "exec", ref, "--", "true"]) == 1
        err = capsys.readouterr().err
        assert "only alice (the owner) and admins may run commands in workspace web1" in err
    assert alice.get(wid).limits.cpu_weight == 200
    # A save holds the workspace (no start until it ends): the admin's, by a bare name,
    # saved the one user's web1 as the admin's image.
    alice.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=wid))
    alice.wait_state(wid, WS.WORKSPACE_STATE_STOPPED)
    capsys.readouterr()
    assert ws_main([*admin, "image", "save", "web1", "web1img:1"]) == 1
    assert (
        "you have no workspace named 'web1'; not guessing someone else's to save: "
        f"give its id or OWNER/NAME (alice/web1 (id {wid}, STOPPED))"
    ) in capsys.readouterr().err
    assert not alice.get(wid).saving_as
    assert ws_main([*bob, "image", "save", "web1", "web1img:1"]) == 1
    assert "only alice (the owner) and admins may save workspace web1" in capsys.readouterr().err


def test_a_colleagues_autoscaler_is_set_by_id_or_owner_name_only(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws cluster autoscale mpi` decides how many members a cluster keeps (it destroys
    some, as a shrinking scale): a member with no mpi turned a colleague's on or off."""
    alice = site.identity("alice", projects=("physics",))
    worker = clusters_pb2.ClusterMember(role="worker", image="img", memory_mib=64, count=1)
    c = alice.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(name="mpi", members=[worker], project="physics")
    )
    bob = _as(site, "bob")
    capsys.readouterr()
    for how in (["--off"], ["--min", "0", "--max", "3", "--signal", "slurm-queue"]):
        assert ws_main([*bob, "cluster", "autoscale", "mpi", "--role", "worker", *how]) == 1
        assert (
            "you have no cluster named 'mpi'; not guessing someone else's to autoscale: "
            f"give its id or OWNER/NAME (alice/mpi (id {c.id}, "
        ) in capsys.readouterr().err
    argv = ["cluster", "autoscale", "alice/mpi", "--role", "worker", "--off"]
    assert ws_main([*bob, *argv]) == 0
    assert ws_main([*bob, *argv[:2], c.id, *argv[3:]]) == 0
    # `ws cluster exec mpi` runs in every member, which an admin may: not in a guess.
    admin = _as(site, site.cfg.default_owner, admin=True)
    capsys.readouterr()
    assert ws_main([*admin, "cluster", "exec", "mpi", "--", "true"]) == 1
    assert (
        "you have no cluster named 'mpi'; not guessing someone else's to run commands in: "
        f"give its id or OWNER/NAME (alice/mpi (id {c.id}, "
    ) in capsys.readouterr().err
    ws_main([*admin, "cluster", "exec", "alice/mpi", "--", "true"])
    assert "not guessing" not in capsys.readouterr().err


def test_a_hint_names_a_colleagues_workspace_as_owner_name(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin who saves, resizes or execs in alice/web1 is told to stop or start it
    first: `ws stop web1` (a bare name) would stop the admin's own web1, or be refused as
    a guess; the hint says alice/web1."""
    wid, _ = _running_web1(site)
    alice = site.identity("alice", projects=("physics",))
    admin = _as(site, site.cfg.default_owner, admin=True)
    capsys.readouterr()
    assert ws_main([*admin, "image", "save", "alice/web1", "web1img:1"]) == 1
    assert "(`ws stop alice/web1 --wait` first)" in capsys.readouterr().err
    assert ws_main([*admin, "update", "alice/web1", "--cpus", "2"]) == 1
    assert "(`ws stop alice/web1 --wait` first)" in capsys.readouterr().err
    alice.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=wid))
    alice.wait_state(wid, WS.WORKSPACE_STATE_STOPPED)
    capsys.readouterr()
    assert ws_main([*admin, "exec", wid, "--", "true"]) == 1
    assert "`ws start alice/web1` first" in capsys.readouterr().err
    # Her own is named by its bare name, as before.
    capsys.readouterr()
    assert ws_main([*_as(site, "alice"), "exec", "web1", "--", "true"]) == 1
    assert "`ws start web1` first" in capsys.readouterr().err
