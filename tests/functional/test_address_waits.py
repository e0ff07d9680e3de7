"""A create waiting for its network's addresses (the range full) holds no node: it waits
for an address, which no node has. As the head of the queue it held the node it would
fit on, so every other create, on any network, was refused (or queued) saying "1
node(s) are held for the request waiting at the head of the capacity queue", rather than
placed, or refused naming the network whose range is full."""

from __future__ import annotations

import grpc

from tests.functional.harness import WS, Site
from tests.functional.test_errors import rpc_error


def test_a_create_waiting_for_addresses_holds_no_node(site: Site) -> None:
    site.stubs.network("tiny", "10.213.9.0/29")  # gateway + 5 addresses
    site.stubs.network("big", "10.213.10.0/24")
    site.stubs.import_image("img")
    site.add_agent("node1", networks=[{"name": "tiny"}, {"name": "big"}])
    for i in range(5):
        site.stubs.create(name=f"t{i}", networks=["tiny"], memory_mib=64)
    queued = site.stubs.create(
        name="later", networks=["tiny"], memory_mib=64, wait_for_capacity_s=600
    )
    assert queued.state == WS.WORKSPACE_STATE_PENDING
    assert "network 'tiny' has no free address left" in site.stubs.get(queued.id).reason
    # Another network's create is placed: the node has room, and big has addresses.
    other = site.stubs.create(name="b0", networks=["big"], memory_mib=64)
    assert other.node == "node1" and other.nics[0].ip.startswith("10.213.10.")
    # One more on tiny is refused for tiny's full range, not for a held node.
    err = rpc_error(site.stubs.create, name="t5", networks=["tiny"], memory_mib=64)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == (
        "cannot place t5: network 'tiny' has no free address left (1 needed, 0 free: 5 of "
        "the 5 of its range 10.213.9.2-10.213.9.6 held; `ws-admin network set tiny "
        "--range` grows it)"
    )
    # The waiting one still gets the next address freed.
    site.stubs.ws.DestroyWorkspace(site.stubs.ref("t0"))
    site.stubs.wait_state(queued.id, WS.WORKSPACE_STATE_RUNNING)
