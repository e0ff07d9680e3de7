"""The Python client of a caller that already has ``max_streams_per_caller`` streams open
(a batch system running as one identity, one waiter per job), against an in-process
service capped at six streams and a fake-driver agent: a wait falls back to reading the
workspace instead of failing with RESOURCE_EXHAUSTED, and a reconnecting watch backs off
until a stream closes rather than ending."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.client import Client
from workspace.edge import workspaces as edge_workspaces
from workspace.v1 import workspaces_pb2

CAP = 6  # the agent's own streams, counted on the Nodes API's server, fit below it


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, max_streams_per_caller=CAP)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1")
        yield s
    finally:
        s.close()


def _fill(site: Site) -> list[Any]:
    """CAP open watches of the caller (every caller of an insecure site is the same one);
    a further stream is refused."""
    watches = [
        site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(), timeout=60)
        for _ in range(CAP)
    ]
    for w in watches:
        next(w)  # open: the initial snapshot came
    with pytest.raises(grpc.RpcError) as refused:
        next(site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(), timeout=5))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    return watches


def test_wait_for_state_polls_when_the_watch_is_refused_for_the_stream_cap(
    capped: Site,
) -> None:
    s = capped.stubs
    w = s.create(name="job1")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    watches = _fill(capped)
    got: dict[str, Any] = {}

    def wait() -> None:
        with Client(capped.address, timeout_s=10) as c:
            try:
                got["ws"] = c.wait_for_state(w.id, [WS.WORKSPACE_STATE_STOPPED], 30)
            except Exception as exc:
                got["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        time.sleep(0.5)  # the waiter has read RUNNING and been refused its watch
        s.ws.StopWorkspace(s.ref(w.id))
        waiter.join(30)
        assert not waiter.is_alive()
        assert "error" not in got, got.get("error")
        assert got["ws"].state == WS.WORKSPACE_STATE_STOPPED
    finally:
        for call in watches:
            call.cancel()


def test_a_reconnecting_watch_backs_off_while_the_stream_cap_refuses_it(capped: Site) -> None:
    w = capped.stubs.create(name="job2")
    watches = _fill(capped)
    told: list[str] = []
    with Client(capped.address, timeout_s=10) as c:
        events = c.watch(reconnect=True, timeout_s=30, on_outage=told.append)
        try:
            threading.Timer(1.5, watches[0].cancel).start()  # one of the streams closes
            first = next(events)
            assert first.initial and first.workspace.id == w.id
            wait_for(lambda: told and told[-1] == "", 30, "the watch flowing again")
            assert "max_streams_per_caller" in told[0]
            assert len(told) == 2  # told once of the refusals, however many, and once of the end
        finally:
            events.close()
            for call in watches:
                call.cancel()


def test_a_cancelled_watch_gives_its_place_back_at_once(
    capped: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch its client cancelled kept its thread and its place among the caller's
    streams until the watch's next poll (5 s; an hour here): a program at the cap that
    cancelled one watch and opened another was refused meanwhile. The cancel ends it."""
    monkeypatch.setattr(edge_workspaces, "STREAM_POLL_S", 3600.0)
    w = capped.stubs.create(name="job3")
    capped.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)  # no change wakes a watch
    watches = _fill(capped)
    try:
        watches[0].cancel()

        def opens() -> bool:
            call = capped.stubs.ws.WatchWorkspaces(
                workspaces_pb2.WatchWorkspacesRequest(), timeout=60
            )
            try:
                next(call)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            watches.append(call)
            return True

        wait_for(opens, 20, "a new watch in the cancelled one's place")
    finally:
        for call in watches:
            call.cancel()
