"""`ws reboot --wait` against an in-process service and fake-driver agent, through
ws.main: the workspace is RUNNING before and after a reboot, so the wait is for the node
to report the reboot carried out (Workspace.applied_reboot_count)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from agent.status import Sight
from tests.functional.harness import WS, Site, wait_for
from workspace.cli import ws
from workspace.client import Client
from workspace.v1 import workspaces_pb2


def run(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """ws ARGV against ``site`` (a fresh client: ws.main closes it)."""
    code = ws.main(list(argv), connect=lambda _s: Client(site.address))
    out, err = capsys.readouterr()
    return code, out, err


def ready_lines(site: Site, wid: str) -> int:
    data = site.stubs.ws.GetConsole(workspaces_pb2.GetConsoleRequest(id=wid)).data
    return data.decode().count("WORKSPACE-READY")


def test_reboot_wait_returns_only_once_the_node_carried_the_reboot_out(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ready_site.stubs
    w = s.create(name="rb")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    driver = ready_site.agents["node1"].driver
    held, entered = threading.Event(), threading.Event()
    reboot = driver.reboot

    def slow_reboot(wid: str, timeout_s: float) -> bool:  # the guest takes its time
        entered.set()
        assert held.wait(30)
        return reboot(wid, timeout_s)

    driver.reboot = slow_reboot  # type: ignore[method-assign]
    done: dict[str, Any] = {}
    waiting = threading.Thread(
        target=lambda: done.update(code=ws.main(
            ["-o", "json", "reboot", "rb", "--wait", "--timeout", "60"],
            connect=lambda _s: Client(ready_site.address),
        ))
    )  # fmt: skip
    waiting.start()
    try:
        assert entered.wait(20), "the agent never started the reboot"
        time.sleep(1.5)  # several reports and a resync pass: RUNNING all along
        assert waiting.is_alive(), "ws reboot --wait returned before the node rebooted"
        now = s.get(w.id)
        assert (now.state, now.reboot_count, now.applied_reboot_count) == (
            WS.WORKSPACE_STATE_RUNNING,
            1,
            0,
        )
    finally:
        held.set()
        waiting.join(30)
    assert not waiting.is_alive() and done["code"] == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["reboot_count"], shown["applied_reboot_count"]) == (
        "RUNNING",
        1,
        1,
    )
    # It did boot again (the console reaches the service as it grows).
    wait_for(lambda: ready_lines(ready_site, w.id) == 2, what="a READY line per boot")

    # Text: the progress on stderr, the line on stdout without anything pending; `ws
    # show` says how many were carried out.
    code, out, err = run(ready_site, capsys, "reboot", "rb", "--wait")
    assert code == 0, err
    assert out.strip() == f"rb ({w.id}): RUNNING"
    assert f"ws: rb ({w.id}): RUNNING, rebooted" in err
    code, out, _ = run(ready_site, capsys, "show", "rb")
    assert "reboot_count  2 (2 carried out)" in out
    wait_for(lambda: ready_lines(ready_site, w.id) == 3, what="a READY line per boot")


def test_reboot_wait_of_several_and_a_timeout(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ready_site.stubs
    for name in ("rb-a", "rb-b"):
        s.wait_state(s.create(name=name).id, WS.WORKSPACE_STATE_RUNNING)
    code, out, err = run(ready_site, capsys, "-o", "json", "reboot", "rb-b", "rb-a", "--wait")
    assert code == 0, err
    shown = json.loads(out)
    assert [(x["name"], x["state"], x["applied_reboot_count"]) for x in shown] == [
        ("rb-b", "RUNNING", 1),
        ("rb-a", "RUNNING", 1),
    ]

    driver = ready_site.agents["node1"].driver
    driver.reboot = lambda wid, timeout_s: time.sleep(2) or True  # type: ignore[method-assign]
    code, out, err = run(ready_site, capsys, "reboot", "rb-a", "--wait", "--timeout", "1")
    assert code == 1 and out == ""
    assert "timed out after 1 s " in err and " to be RUNNING with reboot 2 carried out" in err
    assert "it is RUNNING, 1 of 2 reboots carried out" in err


def test_an_older_agent_cannot_confirm_a_reboot_and_the_wait_says_so(
    ready_site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent from before ObservedWorkspace.applied_reboot_count sends no count: the
    wait ends at RUNNING, as it used to, and stderr says the reboot is not confirmed."""
    executor = ready_site.agents["node1"].executor
    sight = executor.sight

    def older(ids: Any = None) -> Sight:
        seen = sight(ids)
        return replace(
            seen, observations=[replace(o, applied_reboot_count=None) for o in seen.observations]
        )

    monkeypatch.setattr(executor, "sight", older)
    s = ready_site.stubs
    w = s.create(name="rb-old")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    code, out, err = run(ready_site, capsys, "-o", "json", "reboot", "rb-old", "--wait")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["state"] == "RUNNING" and shown["reboot_count"] == 1
    assert "applied_reboot_count" not in shown  # unknown, not 0
    assert "the reboot cannot be confirmed: its node's agent does not report" in err
    assert not s.get(w.id).HasField("applied_reboot_count")
