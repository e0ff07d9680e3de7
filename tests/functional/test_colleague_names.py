"""A name the caller has no workspace (or cluster) of, which a project colleague has:
read it by that name, but act on it (destroy, stop, ...) only by its id or OWNER/NAME.
`ws destroy web1` of a member with no web1 destroyed the colleague's (docs/design/cli.md,
"Naming a workspace or cluster"). Over mutual TLS with real user certificates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.functional.harness import WS, SitePki, TlsSite, wait_for
from workspace.cli.ws import main as ws_main
from workspace.domain import booting
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
CS = clusters_pb2.ClusterState


@contextmanager
def _physics_site(tmp_path: Path, on_expiry: int = 0, **service_kw: Any) -> Iterator[TlsSite]:
    """A site whose project physics has alice and bob; on its node a member of a role
    ``bad`` fails to be made, and workspace ``bare`` has no guest agent."""
    s = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), **service_kw)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        s.add_agent("node1", fake={"fail_create": ["*-bad-*"], "no_guest_agent": ["bare"]})
        projects = projects_pb2_grpc.ProjectsStub(s.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics", on_expiry=on_expiry))
        for user in ("alice", "bob"):
            projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user=user))
        yield s
    finally:
        s.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsSite]:
    with _physics_site(tmp_path) as s:
        yield s


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


def _cluster(site: TlsSite, name: str, *roles: str, **kw: Any) -> str:
    """alice's cluster ``name`` in project physics, one member of each role; its id."""
    members = [
        clusters_pb2.ClusterMember(role=r, image="img", memory_mib=64, count=1) for r in roles
    ]
    alice = site.identity("alice", projects=("physics",))
    req = clusters_pb2.CreateClusterRequest(name=name, members=members, project="physics", **kw)
    return alice.clusters.CreateCluster(req).id


def _cluster_state(site: TlsSite, cid: str) -> int:
    return site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=cid)).state


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """What ws says on stderr for ``argv``, which it refuses (exit 1)."""
    capsys.readouterr()
    assert ws_main(argv) == 1
    return capsys.readouterr().err


def test_a_clusters_hint_names_a_colleagues_as_owner_name(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin who scales alice/mpi is told the command to run first (`ws cluster start
    mpi`, `ws cluster destroy mpi`): by the bare name it would act on the admin's own
    mpi, or be refused as a guess; the hint says alice/mpi. Alice is told mpi."""
    cid = _cluster(site, "mpi", "worker")
    wait_for(lambda: _cluster_state(site, cid) == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
    site.stubs.clusters.StopCluster(clusters_pb2.ClusterRef(id=cid))
    wait_for(lambda: _cluster_state(site, cid) == CS.CLUSTER_STATE_STOPPED, what="STOPPED")
    admin = _as(site, site.cfg.default_owner, admin=True)
    scale = ["cluster", "scale", "alice/mpi", "--role", "worker", "--count"]
    err = _error(capsys, [*admin, *scale, "2"])
    assert (
        "(its new members would run beside stopped ones); `ws cluster start alice/mpi` first" in err
    )
    err = _error(capsys, [*admin, *scale, "0"])
    assert "would leave no member; `ws cluster destroy alice/mpi` removes the cluster" in err
    err = _error(capsys, [*_as(site, "alice"), "cluster", "scale", "mpi", *scale[3:], "2"])
    assert "`ws cluster start mpi` first" in err
    # A cluster torn down after a member failed: only a destroy ends it.
    tid = _cluster(site, "tear", "good", "bad", on_failure=clusters_pb2.FAILURE_POLICY_TEARDOWN)
    wait_for(lambda: _cluster_state(site, tid) == CS.CLUSTER_STATE_FAILED, what="FAILED")
    gone = "`ws cluster destroy alice/tear` removes it"
    for argv in (
        ["cluster", "start", "alice/tear"],
        ["cluster", "scale", "alice/tear", "--role", "good", "--count", "2"],
        ["cluster", "autoscale", "alice/tear", "--role", "good", "--off"],
    ):
        assert gone in _error(capsys, [*admin, *argv]), argv
    err = _error(capsys, [*_as(site, "bob"), "cluster", "start", tid])
    assert gone in err  # a colleague's by its id: named as OWNER/NAME too
    err = _error(capsys, [*_as(site, "alice"), "cluster", "start", "tear"])
    assert "`ws cluster destroy tear` removes it" in err


def test_a_lease_hint_names_a_colleagues_as_owner_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start (a cluster's, a grow) or a save after the lease ended is told `ws lease
    extend NAME DURATION` first: for an admin's of alice/web1 (alice/mpi) the hint said
    web1 (mpi), which extends the admin's own if there is one."""
    # No lease pass while the test runs: the ended leases stay ended, nothing destroyed.
    with _physics_site(
        tmp_path, projects_pb2.LEASE_ACTION_DESTROY, lease_check_interval_s=3600
    ) as site:
        alice = site.identity("alice", projects=("physics",))
        w = alice.create(name="web1", memory_mib=64, project="physics", lease_s=2)
        cid = _cluster(site, "mpi", "worker", lease_s=2)
        alice.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        wait_for(lambda: _cluster_state(site, cid) == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
        alice.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))
        alice.clusters.StopCluster(clusters_pb2.ClusterRef(id=cid))
        alice.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)
        wait_for(lambda: _cluster_state(site, cid) == CS.CLUSTER_STATE_STOPPED, what="STOPPED")
        # The cluster was made after web1: its members' leases end later.
        members = site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=cid)).members
        ends = [alice.get(w.id).lease_expires_at, *(m.lease_expires_at for m in members)]
        end = max(e.ToSeconds() for e in ends)
        wait_for(lambda: time.time() > end + 1, what="the leases to end")
        admin = _as(site, site.cfg.default_owner, admin=True)
        for argv, hint in (
            (["start", "alice/web1"], "`ws lease extend alice/web1 DURATION` first"),
            (
                ["image", "save", "alice/web1", "web1img:1"],
                "`ws lease extend alice/web1 DURATION` first",
            ),
            (["cluster", "start", "alice/mpi"], "`ws lease extend alice/mpi DURATION` first"),
            (
                ["cluster", "scale", "alice/mpi", "--role", "worker", "--count", "2"],
                "`ws lease extend alice/mpi DURATION` first (every member's)",
            ),
        ):
            err = _error(capsys, [*admin, *argv])
            assert "lease ended at" in err and hint in err, (argv, err)
        mine = _as(site, "alice")
        assert "`ws lease extend web1 DURATION` first" in _error(capsys, [*mine, "start", "web1"])
        err = _error(capsys, [*mine, "cluster", "start", "mpi"])
        assert "`ws lease extend mpi DURATION` first" in err


def test_a_guest_agent_hint_names_a_colleagues_as_owner_name(
    site: TlsSite, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exec in a guest with no guest agent, past its boot window, points at the
    console: `ws console bare --attach` of an admin attached to their own bare."""
    monkeypatch.setattr(booting, "BOOT_WINDOW_S", 1.0)
    alice = site.identity("alice", projects=("physics",))
    w = alice.create(name="bare", memory_mib=64, project="physics")
    alice.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    mine = [*_as(site, "alice"), "exec", "bare", "--", "true"]
    said: list[str] = []

    def plainly() -> bool:
        """Within the window the service says it may still be booting; past it, plainly."""
        said.append(_error(capsys, mine))
        return "most likely lacks" in said[-1]

    wait_for(plainly, timeout_s=60.0, what="the boot window to end")  # slack for a loaded host
    assert "(`ws console bare --attach` reaches it)" in said[-1]
    admin = _as(site, site.cfg.default_owner, admin=True)
    err = _error(capsys, [*admin, "exec", "alice/bare", "--", "true"])
    assert "lacks qemu-guest-agent (`ws console alice/bare --attach` reaches it)" in err
