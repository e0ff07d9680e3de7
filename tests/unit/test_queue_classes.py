"""The capacity queue and the preemptible class: a preemptible request waiting at the head
holds its node only against preemptible newcomers; normal work is never held back by it
(docs/design/preemption.md, "Who may preempt whom"), and the oldest normal request
waiting behind it holds its own node against normal newcomers instead. Through the
servicers' plain methods with a real SQLite store (tests/unit/test_request_validation.py).

Two nodes of 4 vCPUs and 4096 MiB; a claim is the memory plus 64 + 2 per GiB + 8 per
vCPU MiB: a (3000) and c (900) leave n1 44 MiB free, b and d the same on n2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import OWNER, Site, build_site
from workspace.domain.states import Op
from workspace.errors import ResourceExhausted
from workspace.node.v1 import nodes_pb2
from workspace.ops import queue
from workspace.ops.admission import HELD, HELD_NORMAL
from workspace.v1 import common_pb2

WS = common_pb2.WorkspaceState


@pytest.fixture
def full(tmp_path: Path) -> Site:
    site = build_site(tmp_path, memory_mib=4096)
    site.nodes.register(
        nodes_pb2.RegisterRequest(
            node="n2", hypervisor="fake", cpus=4, memory_mib=4096, networks=["default"]
        )
    )
    sizes = (("a", 3000), ("b", 3000), ("c", 900), ("d", 900))
    placed = [site.create(name=name, memory_mib=m) for name, m in sizes]
    assert [w.node for w in placed] == ["n1", "n2", "n1", "n2"]
    return site


def gone(site: Site, name: str) -> None:
    """``name`` destroyed, and its node reports it gone: its claim is released."""
    ws = site.core.operate(OWNER, name, Op.DESTROY)
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node=ws.node,
            workspaces=[
                nodes_pb2.ObservedWorkspace(
                    workspace_id=ws.id, state=nodes_pb2.OBSERVED_STATE_ABSENT
                )
            ],
        )
    )


def holds(site: Site) -> list[tuple[str, list[str]]]:
    return [(e.name, list(e.holds)) for e in queue.list_queue(site.core.env)]


def test_a_preemptible_head_does_not_hold_its_node_against_a_normal_create(full: Site) -> None:
    site = full
    head = site.create(name="p", memory_mib=2000, preemptible=True, wait_for_capacity_s=600)
    assert head.state == WS.WORKSPACE_STATE_PENDING
    assert holds(site) == [("p", ["n1"])]  # n1 and n2 tie: the first in name order
    gone(site, "c")  # n1 has 1018 MiB free; n2 still 44
    # A preemptible newcomer is kept off the node the head holds, as before ...
    with pytest.raises(ResourceExhausted, match=f"1 node\\(s\\) {HELD}"):
        site.create(name="q", memory_mib=900, preemptible=True)
    # ... a normal one is not: the preemptible head would have yielded to it anyway.
    normal = site.create(name="n", memory_mib=900)
    assert normal.node == "n1"
    assert site.core.get(OWNER, "p").state == WS.WORKSPACE_STATE_PENDING


def test_the_oldest_normal_request_behind_a_preemptible_head_holds_for_normal_work(
    full: Site,
) -> None:
    site = full
    site.create(name="p", memory_mib=2000, preemptible=True, wait_for_capacity_s=600)
    site.clock.now += 1  # the queue's order is the creation time's
    w = site.create(name="w", memory_mib=900, wait_for_capacity_s=600)
    assert w.state == WS.WORKSPACE_STATE_PENDING
    # Both hold n1: the head against preemptible work, w against normal work too.
    assert holds(site) == [("p", ["n1"]), ("w", ["n1"])]
    gone(site, "c")
    with pytest.raises(ResourceExhausted, match=f"1 node\\(s\\) {HELD_NORMAL}"):
        site.create(name="n", memory_mib=900)
    # The queue's pass: p does not fit yet, w is placed on the node p held.
    assert queue.process(site.core.env) == 1
    assert site.core.get(OWNER, "w").node == "n1"
    assert site.core.get(OWNER, "p").state == WS.WORKSPACE_STATE_PENDING
    assert holds(site) == [("p", ["n1"])]
