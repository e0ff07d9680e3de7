"""`site up` waits for a heartbeat of this start, not the READY a node's row kept from
before; `site status` calls a READY node whose heartbeat is stale STALE, saying how old."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from workspace.site import status
from workspace.site.record import SiteError
from workspace.v1 import admin_pb2

READY = admin_pb2.NodeState.NODE_STATE_READY


def at(when: float, state: int = READY, reason: str = "") -> admin_pb2.Node:
    n = admin_pb2.Node(name="local", state=state, reason=reason)  # type: ignore[arg-type]
    n.last_heartbeat.FromNanoseconds(int(when * 1e9))
    return n


class FakeClient:
    """What the service says of its nodes, one answer per call (the last one repeats)."""

    answers: list[list[admin_pb2.Node]] = []

    def __init__(self, *_args: Any, **_kw: Any) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def list_nodes(self) -> list[admin_pb2.Node]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def wait(since: float, timeout_s: float) -> None:
    status.wait_nodes_ready(
        "unix:/nowhere",
        ["local"],
        [],
        time.monotonic() + timeout_s,
        lambda _n: Path("/x"),
        since=since,
    )


def test_site_up_waits_for_a_heartbeat_of_this_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "Client", FakeClient)
    start = time.time()
    FakeClient.answers = [[at(start - 300)]]  # READY in the database, from before
    with pytest.raises(SiteError, match=r"READY in the database, but no heartbeat since this"):
        wait(start, 0.5)
    FakeClient.answers = [[at(start - 300)], [at(start - 300)], [at(start + 1)]]
    wait(start, 5.0)  # the agent of this start reported: up
    assert FakeClient.answers == [[at(start + 1)]]


def test_site_up_says_why_a_node_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "Client", FakeClient)
    down = admin_pb2.NodeState.NODE_STATE_DOWN
    FakeClient.answers = [[at(time.time(), down, "its agent is refused: registered with …")]]
    with pytest.raises(SiteError, match="DOWN: its agent is refused"):
        wait(time.time() - 10, 0.3)


def test_site_status_calls_a_silent_ready_node_stale() -> None:
    now = time.time()
    fresh = status.node_view(at(now - 2), 15.0)
    assert (fresh["state"], fresh["reason"]) == ("READY", "")
    stale = status.node_view(at(now - 130), 15.0)
    assert stale["state"] == "STALE" and stale["stored_state"] == "READY"
    assert stale["reason"].startswith("READY in the database, but its last heartbeat was 2m1")
    assert status.node_view(None, 15.0)["state"] == "UNKNOWN"
    assert status.age_text(7265) == "2h01m"


def test_the_stale_threshold_follows_the_sites_heartbeat(tmp_path: Path) -> None:
    assert status.heartbeat_interval(tmp_path) == 5.0  # no service.toml: the default
    (tmp_path / "service.toml").write_text("heartbeat_interval_s = 2\n")
    assert status.heartbeat_interval(tmp_path) == 2.0
