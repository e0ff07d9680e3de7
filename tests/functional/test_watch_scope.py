"""What a user's open ``WatchWorkspaces`` stream carries: the workspaces they may see
(``ws show``/``ws list``), no others (docs/security.md, "Roles")."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import ROOT, WS, SitePki, TlsSite, wait_for
from tests.functional.test_backfill import backfill_live, fill, set_
from workspace.v1 import projects_pb2, projects_pb2_grpc, workspaces_pb2


def _collect(stream: object, into: queue.Queue[workspaces_pb2.WorkspaceEvent]) -> None:
    try:
        for ev in stream:  # type: ignore[attr-defined]
            into.put(ev)
    except grpc.RpcError:  # the stream is cancelled at the end
        pass


def _grid(site: TlsSite) -> projects_pb2_grpc.ProjectsStub:
    """A network, an image and a node, and a project "grid"; the admin's Projects stub."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1")
    projects = projects_pb2_grpc.ProjectsStub(site.stubs.channel)
    projects.CreateProject(projects_pb2.Project(name="grid"))
    return projects


def test_a_project_members_watch_carries_no_backfill_workspace(tmp_path: Path) -> None:
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), backfill_interval_s=3600.0)
    try:
        _grid(site)
        member = site.identity("alice", projects=("grid",))
        stream = member.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
        seen: queue.Queue[workspaces_pb2.WorkspaceEvent] = queue.Queue()
        threading.Thread(target=_collect, args=(stream, seen), daemon=True).start()
        set_(site, max=1, project="grid")
        assert fill(site) == 1
        [made] = backfill_live(site)
        # The member's own workspace afterwards: once its events arrive, any of the
        # backfill workspace's would have too.
        mine = member.create(name="mine", project="grid")
        got: list[workspaces_pb2.WorkspaceEvent] = []

        def mine_seen() -> bool:
            while not seen.empty():
                got.append(seen.get())
            return any(e.workspace.id == mine.id for e in got)

        wait_for(mine_seen, what="the member's own workspace on the watch")
        assert made.id not in {e.workspace.id for e in got}
        stream.cancel()
    finally:
        site.close()


def _drain(seen: queue.Queue[workspaces_pb2.WorkspaceEvent], got: list[tuple[str, int]]) -> None:
    while not seen.empty():
        w = seen.get().workspace
        got.append((w.name, w.state))


def test_a_user_removed_from_a_project_stops_seeing_its_workspaces_on_an_open_watch(
    tmp_path: Path,
) -> None:
    """`ws-admin project remove-user` takes the project's workspaces out of the member's
    `ws watch` at once, as out of `ws list`: not only from the next watch they open."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        projects = _grid(site)
        member = projects_pb2.ProjectUserRequest(project="grid", user="alice")
        projects.AddProjectUser(member)
        alice = site.identity("alice")  # a member by the admin's record, not her certificate
        bob = site.identity("bob", projects=("grid",))
        stream = alice.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
        seen: queue.Queue[workspaces_pb2.WorkspaceEvent] = queue.Queue()
        threading.Thread(target=_collect, args=(stream, seen), daemon=True).start()
        got: list[tuple[str, int]] = []
        before = bob.create(name="before", project="grid")
        running = ("before", WS.WORKSPACE_STATE_RUNNING)
        wait_for(lambda: _drain(seen, got) or running in got, what="bob's workspace running")
        # A watch of that one workspace too (`ws watch before`): its snapshot first.
        one = alice.ws.WatchWorkspaces(
            workspaces_pb2.WatchWorkspacesRequest(id=before.id), timeout=60
        )  # the timeout a bound, not a check
        assert next(one).workspace.id == before.id
        projects.RemoveProjectUser(member)
        got.clear()
        bob.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=before.id))
        with pytest.raises(grpc.RpcError) as info:
            for ev in one:
                assert ev.workspace.state == WS.WORKSPACE_STATE_RUNNING, ev  # none after
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        bob.create(name="after", project="grid")
        # Her own workspace last: once its events arrive, bob's would have too.
        alice.create(name="mine")
        wait_for(lambda: _drain(seen, got) or "mine" in {n for n, _ in got}, what="her own")
        assert {n for n, _ in got} == {"mine"}
        listed = alice.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
        assert [w.name for w in listed] == ["mine"]
        stream.cancel()
    finally:
        site.close()


def test_a_user_removed_from_a_project_stops_following_its_workspaces_events(
    tmp_path: Path,
) -> None:
    """`ws events W --follow` of a project workspace ends NOT_FOUND once its follower is
    taken out of the project, as `ws events W` then is: nothing of W after that."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        projects = _grid(site)
        member = projects_pb2.ProjectUserRequest(project="grid", user="alice")
        projects.AddProjectUser(member)
        alice = site.identity("alice")
        bob = site.identity("bob", projects=("grid",))
        theirs = bob.create(name="theirs", project="grid")
        bob.wait_state(theirs.id, WS.WORKSPACE_STATE_RUNNING)
        follow = workspaces_pb2.WatchWorkspaceEventsRequest(id=theirs.id, follow=True)
        stream = alice.ws.WatchWorkspaceEvents(follow, timeout=60)  # a bound, not a check
        first = next(stream)  # she follows it: its past first
        assert first.workspace_id == theirs.id
        projects.RemoveProjectUser(member)
        bob.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=theirs.id))
        bob.wait_state(theirs.id, WS.WORKSPACE_STATE_STOPPED)
        after: list[str] = []
        with pytest.raises(grpc.RpcError) as info:
            for e in stream:
                after.append(e.state)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        assert "STOPPED" not in after and "STOPPING" not in after
        with pytest.raises(grpc.RpcError) as again:
            list(alice.ws.WatchWorkspaceEvents(follow))
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        site.close()


def test_a_user_added_to_a_project_sees_its_workspaces_on_an_open_watch(
    tmp_path: Path,
) -> None:
    """`ws-admin project add-user` brings the project's workspaces into the member's open
    `ws watch`, as into `ws list`: those there already, and their changes from then on
    (before, the watch filtered on the scope it began with)."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        projects = _grid(site)
        alice = site.identity("alice")
        bob = site.identity("bob", projects=("grid",))
        there = bob.create(name="there", project="grid")
        stream = alice.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
        seen: queue.Queue[workspaces_pb2.WorkspaceEvent] = queue.Queue()
        threading.Thread(target=_collect, args=(stream, seen), daemon=True).start()
        got: list[tuple[str, int]] = []
        alice.create(name="mine")  # her own: once its events arrive, bob's would have too
        wait_for(lambda: _drain(seen, got) or "mine" in {n for n, _ in got}, what="her own")
        assert "there" not in {n for n, _ in got}
        projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="grid", user="alice"))
        wait_for(lambda: _drain(seen, got) or "there" in {n for n, _ in got}, what="bob's")
        bob.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=there.id))
        stopped = ("there", WS.WORKSPACE_STATE_STOPPED)
        wait_for(lambda: _drain(seen, got) or stopped in got, what="bob's workspace stopped")
        stream.cancel()
    finally:
        site.close()


def test_an_admins_watch_of_every_workspace_is_of_their_own_and_their_projects(
    tmp_path: Path,
) -> None:
    """WatchWorkspacesRequest.id said "empty: every workspace the caller may see": an
    admin may see every workspace, but such a watch carries, as for any user, their own
    and their projects' (docs/api.md: "there is no all_users here"). The proto says so
    now; a watch of another user's workspace by its id follows it."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        _grid(site)
        alice = site.identity("alice", projects=("grid",))
        hers = alice.create(name="hers", project="grid")
        admin = site.stubs
        stream = admin.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
        seen: queue.Queue[workspaces_pb2.WorkspaceEvent] = queue.Queue()
        threading.Thread(target=_collect, args=(stream, seen), daemon=True).start()
        got: list[tuple[str, int]] = []
        own = admin.create(name="own")
        wait_for(lambda: _drain(seen, got) or ("own", WS.WORKSPACE_STATE_RUNNING) in got)
        alice.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=hers.id, force=True))
        admin.wait_state(hers.id, WS.WORKSPACE_STATE_STOPPED)
        admin.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=own.id, force=True))
        wait_for(lambda: _drain(seen, got) or ("own", WS.WORKSPACE_STATE_STOPPED) in got)
        assert "hers" not in {name for name, _ in got}
        stream.cancel()
        one = admin.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(id=hers.id))
        assert next(iter(one)).workspace.name == "hers"
        one.cancel()
        proto = (ROOT / "protos/workspace/v1/workspaces.proto").read_text()
        assert "empty: every workspace the caller may see" not in proto
    finally:
        site.close()
