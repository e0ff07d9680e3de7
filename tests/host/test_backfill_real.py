"""Backfill on real VMs: a 1-node libvirt local site, `ws-admin backfill set appliance
--max 2` → the leader's pass boots two busybox appliance VMs, RUNNING, seen by the node's
libvirtd; `ws-admin backfill clear appliance` → they are destroyed and their domains gone.

The site runs the service's default `backfill_interval_s` (10 s): this also checks the
loop runs on a real site. Boots hold /tmp/ws-realvm.lock (one booting helper at a time).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from images.appliance import Appliance
from tests.functional.harness import WS, Stubs, wait_for
from tests.host.realsite import StubsSite, appliance_site
from workspace.domain.tenancy import BACKFILL_OWNER
from workspace.v1 import admin_pb2, common_pb2, workspaces_pb2

pytestmark = pytest.mark.host
BOOT_S = 240.0


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[StubsSite]:
    with appliance_site("wsb", appliance) as s:
        yield s


def backfill_workspaces(stubs: Stubs) -> list[common_pb2.Workspace]:
    req = workspaces_pb2.ListWorkspacesRequest(all_users=True)
    return [w for w in stubs.ws.ListWorkspaces(req).workspaces if w.owner == BACKFILL_OWNER]


def test_backfill_boots_two_appliance_vms_and_clear_removes_them(site: StubsSite) -> None:
    stubs = site.stubs
    assert stubs is not None
    assert site.running() == []
    out = site.admin("backfill", "set", "appliance", "--max", "2", "--memory-mib", "128")
    assert out.returncode == 0, out.stderr
    entry = wait_for(
        lambda: next(
            (
                e
                for e in stubs.admin.ListBackfill(admin_pb2.ListBackfillRequest()).entries
                if e.running == 2
            ),
            None,
        ),
        BOOT_S,
        "two backfill VMs RUNNING",
    )
    assert (entry.live, entry.running) == (2, 2)
    made = backfill_workspaces(stubs)
    assert sorted(w.name for w in made) == ["backfill-appliance-1", "backfill-appliance-2"]
    assert all(w.preemptible and w.state == WS.WORKSPACE_STATE_RUNNING for w in made)
    assert len(site.running()) == 2  # the node's libvirtd runs exactly these two
    # No third: the pass keeps the count at max.
    out = site.admin("-o", "json", "backfill", "list")
    assert out.returncode == 0 and [e["live"] for e in json.loads(out.stdout)] == [2]

    out = site.admin("-o", "json", "backfill", "clear", "appliance")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["live"] == 2
    for w in made:
        stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED, BOOT_S)
    wait_for(lambda: site.running() == [], BOOT_S, "the backfill domains gone")
