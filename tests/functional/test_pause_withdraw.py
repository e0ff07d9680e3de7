"""A resume that withdraws a pause (and a pause that withdraws a resume) against an
in-process service and fake-driver agent: what the node does when the withdrawn operation
had reached it already, and what a `ws pause|resume --wait` waiting meanwhile sees."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agent.virt.base import DomainState
from tests.functional.harness import WS, Site, wait_for
from workspace.cli import ws
from workspace.client import Client
from workspace.codec import events as codec_events
from workspace.v1 import common_pb2, workspaces_pb2

DS = common_pb2.DesiredState


def test_a_resume_after_the_node_paused_it_ends_running(ready_site: Site) -> None:
    """The pause went out and the node paused the guest, but its report has not come:
    the service still shows RUNNING, being paused, so a resume withdraws the pause. The
    node's late PAUSED is then a paused guest that should run: the agent resumes it, and
    the workspace ends RUNNING with its guest running (not left paused for good)."""
    s = ready_site.stubs
    w = s.create(name="late")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    driver = ready_site.agents["node1"].driver
    held, paused = threading.Event(), threading.Event()
    suspend = driver.suspend

    def slow_report(wid: str) -> None:  # paused at once; the report waits for `held`
        suspend(wid)
        paused.set()
        assert held.wait(30)

    driver.suspend = slow_report  # type: ignore[method-assign]
    try:
        shown = s.ws.PauseWorkspace(s.ref(w.id))
        assert (shown.state, shown.desired_state) == (
            WS.WORKSPACE_STATE_RUNNING,
            DS.DESIRED_STATE_PAUSED,
        )
        assert paused.wait(20), "the agent never paused the guest"
        shown = s.ws.ResumeWorkspace(s.ref(w.id))
        # Not RUNNING while its guest is paused: PAUSED, being resumed, until the node
        # reports (it answered RUNNING, and `ws resume --wait` ended at once).
        assert (shown.state, shown.desired_state) == (
            WS.WORKSPACE_STATE_PAUSED,
            DS.DESIRED_STATE_RUNNING,
        )
        assert driver.list_domains()[0].state is DomainState.PAUSED
        assert s.get(w.id).state == WS.WORKSPACE_STATE_PAUSED
    finally:
        held.set()
    wait_for(
        lambda: (
            driver.list_domains()[0].state is DomainState.RUNNING
            and s.get(w.id).state == WS.WORKSPACE_STATE_RUNNING
        ),
        what="the guest resumed and the workspace RUNNING",
    )
    now = s.get(w.id)
    assert (now.state, now.desired_state) == (WS.WORKSPACE_STATE_RUNNING, DS.DESIRED_STATE_RUNNING)


def _wait_in_thread(site: Site, *argv: str) -> tuple[threading.Thread, dict[str, Any]]:
    done: dict[str, Any] = {}
    waiting = threading.Thread(
        target=lambda: done.update(
            code=ws.main(list(argv), connect=lambda _s: Client(site.address))
        )
    )
    waiting.start()
    return waiting, done


def test_a_pause_after_the_node_resumed_it_ends_paused(ready_site: Site) -> None:
    """The other way round: a resume the node carried out whose report has not come (the
    service shows PAUSED, being resumed) is withdrawn by a pause; the node's late RUNNING
    is a running guest that should be paused: the agent pauses it again. Meanwhile the
    workspace shows RUNNING, being paused, while its guest runs: the pause answered
    PAUSED, and a `ws pause --wait` ended at once with the guest running."""
    s = ready_site.stubs
    w = s.create(name="late2")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    s.ws.PauseWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_PAUSED)
    driver = ready_site.agents["node1"].driver
    held, resumed = threading.Event(), threading.Event()
    resume = driver.resume

    def slow_report(wid: str) -> None:
        resume(wid)
        resumed.set()
        assert held.wait(30)

    driver.resume = slow_report  # type: ignore[method-assign]
    try:
        s.ws.ResumeWorkspace(s.ref(w.id))
        assert resumed.wait(20), "the agent never resumed the guest"
        shown = s.ws.PauseWorkspace(s.ref(w.id))
        assert (shown.state, shown.desired_state) == (
            WS.WORKSPACE_STATE_RUNNING,
            DS.DESIRED_STATE_PAUSED,
        )
        assert driver.list_domains()[0].state is DomainState.RUNNING
        assert s.get(w.id).state == WS.WORKSPACE_STATE_RUNNING
    finally:
        held.set()
    wait_for(
        lambda: (
            driver.list_domains()[0].state is DomainState.PAUSED
            and s.get(w.id).state == WS.WORKSPACE_STATE_PAUSED
        ),
        what="the guest paused again and the workspace PAUSED",
    )
    # What a watcher saw since it first ran: paused (the node), RUNNING by the pause
    # withdrawing the resume, the node's late RUNNING changes nothing, its PAUSED ends it.
    req = workspaces_pb2.WatchWorkspaceEventsRequest(id=w.id, kinds=["workspace.state"])
    states = [
        (e.previous, e.state)
        for e in (codec_events.event_from_proto(p) for p in s.ws.WatchWorkspaceEvents(req))
    ]
    assert states[states.index(("STARTING", "RUNNING")) + 1 :] == [
        ("RUNNING", "PAUSED"),
        ("PAUSED", "RUNNING"),
        ("RUNNING", "PAUSED"),
    ]


def test_a_pause_wait_ends_when_a_resume_withdraws_the_pause(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws pause --wait` waits for PAUSED. Since a resume withdraws a pause the node has
    not made, another client's (a batch system's) resume meanwhile means PAUSED will not
    come: the wait waited out its whole timeout and then said 'timed out ... to be
    PAUSED; it is RUNNING'. It ends at once, saying the workspace is to run again."""
    s = ready_site.stubs
    w = s.create(name="wd")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    ready_site.stop_agent("node1")  # the pause is not made meanwhile
    waiting, done = _wait_in_thread(ready_site, "pause", "wd", "--wait", "--wait-timeout", "40")
    try:
        wait_for(
            lambda: s.get(w.id).desired_state == DS.DESIRED_STATE_PAUSED, what="the pause asked"
        )
        s.ws.ResumeWorkspace(s.ref(w.id))
    finally:
        waiting.join(60)
    assert not waiting.is_alive() and done["code"] == 1
    err = capsys.readouterr().err
    assert "timed out" not in err
    assert (
        "ws: error: workspace wd is to be RUNNING now, no longer PAUSED (waited for PAUSED)" in err
    )


def test_a_resume_wait_ends_when_a_pause_withdraws_the_resume(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ready_site.stubs
    w = s.create(name="wd2")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    s.ws.PauseWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_PAUSED)
    ready_site.stop_agent("node1")
    waiting, done = _wait_in_thread(ready_site, "resume", "wd2", "--wait", "--wait-timeout", "40")
    try:
        wait_for(
            lambda: s.get(w.id).desired_state == DS.DESIRED_STATE_RUNNING, what="the resume asked"
        )
        s.ws.PauseWorkspace(s.ref(w.id))
    finally:
        waiting.join(60)
    assert not waiting.is_alive() and done["code"] == 1
    err = capsys.readouterr().err
    assert "timed out" not in err
    assert (
        "ws: error: workspace wd2 is to be PAUSED now, no longer RUNNING (waited for RUNNING)"
        in err
    )
    # Each asked leaves an event of who asked; the pause that withdrew the resume says so.
    req = workspaces_pb2.WatchWorkspaceEventsRequest(id="wd2", kinds=["workspace"])
    evs = [codec_events.event_from_proto(p) for p in s.ws.WatchWorkspaceEvents(req)]
    assert [(e.kind, e.who, e.reason) for e in evs if e.kind != "workspace.state"][-3:] == [
        ("workspace.pause", "user:local", "pause of the workspace asked"),
        ("workspace.resume", "user:local", "resume of the workspace asked"),
        (
            "workspace.pause",
            "user:local",
            "pause asked: it withdrew the resume asked before, which its node had not "
            "reported done (still PAUSED); shown RUNNING until its node reports it paused "
            "(it may have resumed it already)",
        ),
    ]
