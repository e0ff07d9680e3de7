"""A batch system (or a scientist) follows only its own workspaces: ``mine`` on
WatchWorkspaces keeps the first part and the changes to the caller's own, as on
ListWorkspaces (tests/functional/test_own_lists.py), not its project colleagues', on
SQLite, on PostgreSQL, and on a replica other than the one the changes were made
through (it hears them by LISTEN/NOTIFY). The Python client's ``watch(mine=True)``, also
against a service older than the field, and ``ws watch --mine [-o json]``."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, SitePki, Stubs, TlsSite, wait_for
from workspace import errors
from workspace.cli.ws import main as ws_main
from workspace.client import Client
from workspace.v1 import images_pb2, projects_pb2, projects_pb2_grpc, workspaces_pb2

Event = workspaces_pb2.WorkspaceEvent
RUNNING = WS.WORKSPACE_STATE_RUNNING


@dataclass
class Sites:
    """``watched``: the replica the watches are opened on; ``acted``: the one the
    workspaces are made through (the same site but for the replicas)."""

    watched: TlsSite
    acted: TlsSite


@pytest.fixture(params=["sqlite", "postgresql", "replicas"])
def sites(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sites]:
    pki = SitePki(tmp_path / "pki")
    made: list[TlsSite] = []
    try:
        if request.param == "sqlite":
            made.append(TlsSite(tmp_path / "site", pki))
        else:
            url = request.getfixturevalue("pg_db")
            for name in ("a", "b") if request.param == "replicas" else ("a",):
                (tmp_path / name).mkdir()
                made.append(
                    TlsSite(tmp_path / name, pki, database_url=url, data_dir=str(tmp_path / "d"))
                )
        acted = made[-1]
        acted.stubs.network()
        acted.stubs.import_image("img")
        acted.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        acted.add_agent("node1", cpus=8, memory_mib=8192)
        projects = projects_pb2_grpc.ProjectsStub(acted.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user="bob"))
        yield Sites(made[0], acted)
    finally:
        for s in made:
            s.close()


class Watch:
    """An open WatchWorkspaces stream, its events collected by a thread."""

    def __init__(self, stubs: Stubs, **kw: Any) -> None:
        self.stream = stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(**kw))
        self._q: queue.Queue[Event] = queue.Queue()
        self.got: list[Event] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for ev in self.stream:
                self._q.put(ev)

    def has(self, name: str, state: int | None = None) -> bool:
        while not self._q.empty():
            self.got.append(self._q.get())
        return any(
            e.workspace.name == name and state in (None, e.workspace.state) for e in self.got
        )

    def wait(self, name: str, state: int | None = None) -> None:
        wait_for(lambda: self.has(name, state), what=f"{name} on the watch")

    def names(self) -> set[tuple[str, str]]:
        return {(e.workspace.name, e.workspace.owner) for e in self.got}


def test_a_mine_watch_carries_only_the_callers_own_workspaces(sites: Sites) -> None:
    watched, acted = sites.watched, sites.acted
    alice_here = watched.identity("alice", projects=("physics",))
    alice = acted.identity("alice", projects=("physics",))
    bob = acted.identity("bob")  # a member by the service's record, not his certificate
    before = bob.create(name="before", project="physics")
    alice.create(name="early", project="physics")
    mine = Watch(alice_here, mine=True)
    plain = Watch(alice_here)
    mine.wait("early")  # both subscribed: their first parts came
    plain.wait("early")
    theirs = bob.create(name="theirs", project="physics")
    plain.wait("theirs", RUNNING)
    # Her own last: once its events arrive on the mine watch, bob's would have too.
    hers = alice.create(name="hers", project="physics")
    mine.wait("hers", RUNNING)
    plain.wait("hers", RUNNING)
    assert mine.names() == {("early", "alice"), ("hers", "alice")}
    assert all(e.mine for e in mine.got)
    assert plain.names() == {
        ("before", "bob"),
        ("early", "alice"),
        ("theirs", "bob"),
        ("hers", "alice"),
    }
    assert not any(e.mine for e in plain.got)
    # A change of bob's on the open watches: only on the plain one.
    bob.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=theirs.id))
    plain.wait("theirs", WS.WORKSPACE_STATE_STOPPED)
    alice.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=hers.id))
    mine.wait("hers", WS.WORKSPACE_STATE_STOPPED)
    assert mine.names() == {("early", "alice"), ("hers", "alice")}
    mine.stream.cancel()
    plain.stream.cancel()

    # A new watch's first part too: bob's only his, alice's only hers.
    bob_here = watched.identity("bob")
    assert _first_part(bob_here, bob, "bob-mark") == [
        ("before", True, True),
        ("theirs", True, True),
    ]
    assert _first_part(alice_here, alice, "alice-mark") == [
        ("early", True, True),
        ("hers", True, True),
    ]

    # With an id: her own is followed; a colleague's is NOT_FOUND, saying whose it is.
    one = alice_here.ws.WatchWorkspaces(
        workspaces_pb2.WatchWorkspacesRequest(id="hers", mine=True), timeout=60
    )  # the timeout a bound, not a check
    assert next(one).workspace.id == hers.id
    one.cancel()
    with pytest.raises(grpc.RpcError) as info:
        next(
            alice_here.ws.WatchWorkspaces(
                workspaces_pb2.WatchWorkspacesRequest(id=before.id, mine=True), timeout=60
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "is bob's, not yours" in (info.value.details() or "")


def _first_part(watcher: Stubs, maker: Stubs, mark: str) -> list[tuple[str, bool, bool]]:
    """(name, initial, mine) of each event a new mine watch of ``watcher`` sends before
    ``mark``: a workspace of the same user's that ``maker`` creates once the first event
    came (the first part was read then), so that it comes after the first part."""
    stream = watcher.ws.WatchWorkspaces(
        workspaces_pb2.WatchWorkspacesRequest(mine=True), timeout=60
    )  # the timeout a bound, not a check
    out: list[tuple[str, bool, bool]] = []
    try:
        for ev in stream:
            if ev.workspace.name == mark:
                return sorted(out)
            out.append((ev.workspace.name, ev.initial, ev.mine))
            if len(out) == 1:
                maker.create(name=mark, project="physics")
    finally:
        stream.cancel()
    raise AssertionError(f"the watch ended before {mark}: {out}")


class _OlderService:
    """A WatchWorkspaces stub that drops ``mine``, as a service older than it does (it
    reads no field it does not know and answers without the echo)."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.WatchWorkspaces

    def __call__(self, request: Any, **kw: Any) -> Any:
        request = type(request).FromString(request.SerializeToString())
        request.mine = False
        return self.call(request, **kw)


def _until(events: Generator[Event, None, None], name: str) -> list[tuple[str, str]]:
    """(name, owner) of each event up to the first of ``name``; the watch is closed."""
    out: list[tuple[str, str]] = []
    try:
        for ev in events:
            out.append((ev.workspace.name, ev.workspace.owner))
            if ev.workspace.name == name:
                return out
    finally:
        events.close()
    raise AssertionError(f"the watch ended before {name}: {out}")


@pytest.mark.parametrize("sites", ["sqlite"], indirect=True)
def test_the_clients_mine_watch_keeps_to_its_own_against_an_older_service_too(
    sites: Sites,
) -> None:
    site = sites.acted
    a1 = site.identity("alice", projects=("physics",)).create(name="a1", project="physics")
    site.identity("bob").create(name="b1", project="physics")
    with Client(site.address, site.pki.tls(site.pki.user("bob"))) as c:
        with pytest.raises(errors.NotFound) as theirs:
            _until(c.watch(a1.id, mine=True, timeout_s=60), "a1")
        assert f"workspace '{a1.id}' is alice's, not yours" in theirs.value.message
        assert set(_until(c.watch(timeout_s=60), "b1")) == {("a1", "alice"), ("b1", "bob")}
        assert _until(c.watch(mine=True, timeout_s=60), "b1") == [("b1", "bob")]
        c._workspaces.WatchWorkspaces = _OlderService(c._workspaces)  # type: ignore[method-assign]
        # The service sends alice's too (mine false on each): the client keeps bob's, the
        # user its certificate names.
        assert _until(c.watch(mine=True, reconnect=True, timeout_s=60), "b1") == [("b1", "bob")]
        # A colleague's one workspace: NOT_FOUND, as the newer service says, not a watch
        # that drops every event of it and so says nothing until it is interrupted.
        with pytest.raises(errors.NotFound) as theirs:
            _until(c.watch(a1.id, mine=True, reconnect=True, timeout_s=30), "a1")
        assert f"workspace '{a1.id}' is alice's, not yours" in theirs.value.message
        # Without a certificate to read (a plaintext client): refused, never everyone's.
        c.tls = None
        with pytest.raises(errors.FailedPrecondition) as info:
            _until(c.watch(mine=True, timeout_s=60), "b1")
        assert "runs an older release than this client" in info.value.message
        assert "watched every workspace you see, not only yours" in info.value.message


def _ctrl_c_after(name: str, then: Callable[[], None]) -> Callable[..., Client]:
    """A `ws` connect whose client's watch calls ``then`` after the first event (the
    watch is open: what ``then`` makes is among its changes) and is interrupted, as by
    Ctrl-C, after the first event of ``name``."""

    def connect(service: str, identity: str | None = None) -> Client:
        client = Client.from_env(service, identity=identity)
        real = client.watch

        def watch(*a: Any, **kw: Any) -> Generator[Event, None, None]:
            events = real(*a, **kw)
            try:
                for i, ev in enumerate(events):
                    yield ev
                    if i == 0:
                        then()
                    if ev.workspace.name == name:
                        raise KeyboardInterrupt
            finally:
                events.close()

        client.watch = watch  # type: ignore[method-assign]
        return client

    return connect


@pytest.mark.parametrize("sites", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mine", [True, False])
def test_ws_watch_mine(sites: Sites, mine: bool, capsys: pytest.CaptureFixture[str]) -> None:
    site = sites.acted
    alice = site.identity("alice", projects=("physics",))
    bob = site.identity("bob")
    alice.create(name="a1", project="physics")
    bob.create(name="b1", project="physics")

    def later() -> None:  # alice's first: bob's last is where the watch is interrupted
        alice.create(name="a2", project="physics")
        bob.create(name="b2", project="physics")

    argv = ["--service", site.address, "--identity", str(site.pki.user("bob"))]
    flag = ["--mine"] if mine else []
    connect = _ctrl_c_after("b2", later)
    # Ctrl-C ends a watch as any wait: exit 130 (the lines printed before it stay whole)
    assert ws_main([*argv, "watch", *flag, "-o", "json"], connect=connect) == 130
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    shown = {(e["workspace"]["name"], e["workspace"]["owner"]) for e in events}
    if mine:
        assert shown == {("b1", "bob"), ("b2", "bob")}
    else:
        assert shown == {("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("b2", "bob")}
    assert {e["mine"] for e in events} == {mine}
    # The text form names the same workspaces, one line per change.
    connect = _ctrl_c_after("b1", lambda: None)
    assert ws_main([*argv, "watch", *flag], connect=connect) == 130
    lines = capsys.readouterr().out.splitlines()
    assert any(" b1 " in f" {line} " for line in lines)
    assert any(" a1 " in f" {line} " for line in lines) is not mine
