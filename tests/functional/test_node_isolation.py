"""A node that cannot isolate (no br_netfilter), over the real service with a fake-driver
agent whose networking says so: only its `cluster`/`outbound` workspaces are held back,
and their owner sees why in `ws show` and in the site's events; `open` ones start."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.netsetup import NullNetworking
from tests.functional.harness import WS, Site, wait_for
from tests.functional.test_site_events import events
from workspace.domain.model import Order
from workspace.domain.netpolicy import Connectivity

WHY = (
    "not isolated: its connectivity policy cannot be enforced on node node1: modprobe br_netfilter"
)


class NoBrNetfilter(NullNetworking):
    """What BridgeNetworking says on a node without br_netfilter (its own tests are in
    tests/unit/test_uplink.py and tests/host/test_nft_restore.py)."""

    def __init__(self) -> None:
        self.filtered = False
        self.restricted: set[str] = set()

    def sync(self, orders: Sequence[Order]) -> Mapping[str, str]:
        self.restricted = {
            o.workspace_id for o in orders if o.connectivity is not Connectivity.OPEN
        }
        return {}

    def holds(self) -> Mapping[str, str]:
        return {} if self.filtered else dict.fromkeys(self.restricted, WHY)


def test_only_the_workspaces_needing_isolation_wait_and_say_why(ready_site: Site) -> None:
    site = ready_site
    net = NoBrNetfilter()
    site.agents["node1"].executor.net = net
    iso = site.stubs.create(name="iso", connectivity="outbound")
    op = site.stubs.create(name="op", connectivity="open")
    site.stubs.wait_state(op.id, WS.WORKSPACE_STATE_RUNNING)
    got = site.stubs.wait_state(iso.id, WS.WORKSPACE_STATE_FAILED)
    assert got.reason == WHY
    failed = wait_for(
        lambda: [e for e in events(site) if e.workspace_id == iso.id and e.state == "FAILED"],
        what="iso's FAILED event",
    )
    assert failed[0].kind == "workspace.state" and failed[0].reason == WHY
    net.filtered = True  # the admin loads br_netfilter: the next pass starts it
    site.agents["node1"].executor.wake.set()
    got = site.stubs.wait_state(iso.id, WS.WORKSPACE_STATE_RUNNING)
    assert got.reason == ""
