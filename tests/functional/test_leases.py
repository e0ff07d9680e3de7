"""A lease ending on a real service with a fake-driver agent: the service's lease loop
warns, then stops the workspace through the node like a user's stop; usage stops too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.virt.base import DomainState
from tests.functional.harness import WS, Site, iter_events
from workspace.v1 import common_pb2, usage_pb2


@pytest.fixture
def lease_site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, lease_check_interval_s=0.2, lease_warning_s=2)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1")
        yield s
    finally:
        s.close()


def test_a_lease_expiry_stops_the_workspace_on_its_node(lease_site: Site) -> None:
    stubs = lease_site.stubs
    ws = stubs.create(name="short", lease_s=4)
    assert ws.HasField("lease_expires_at")
    reasons: list[str] = []
    for event in iter_events(stubs, ws.id):
        reasons.append(event.workspace.reason)
        if event.workspace.state == WS.WORKSPACE_STATE_STOPPED:
            break
        assert len(reasons) < 100, reasons
    assert any(r.startswith("lease ends at ") for r in reasons), reasons
    assert any(r.startswith("lease expired at ") for r in reasons), reasons
    stopped = stubs.get(ws.id)
    assert stopped.desired_state == common_pb2.DESIRED_STATE_STOPPED
    # the node acted on it: its domain is shut off, not gone
    (dom,) = [
        d for d in lease_site.agents["node1"].driver.list_domains() if d.workspace_id == ws.id
    ]
    assert dom.state is DomainState.SHUTOFF

    def cpu_hours() -> float:
        r = stubs.ws.GetUsage(usage_pb2.GetUsageRequest())
        return sum(row.core_hours for row in r.rows)

    first = cpu_hours()
    assert first > 0
    assert cpu_hours() == first  # stopped: no more core-hours
