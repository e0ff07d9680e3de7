"""The capacity queue and the preemptible class: a preemptible request waiting at the head
holds its node only against preemptible newcomers; normal work is never held back by it
(docs/design/preemption.md, "Who may preempt whom"), and the oldest normal request
waiting behind it holds its own node against normal newcomers instead. Through the
servicers' plain methods with a real SQLite store (tests/unit/test_request_validation.py).

And `ws-admin schedule dump` / `explain`: they show what keeps the node views' free
capacity from a create (the nodes the queue holds; workspaces preempted earlier, still
stopping).

Two nodes of 4 vCPUs and 4096 MiB; a claim is the memory plus 64 + 2 per GiB + 8 per
vCPU MiB: a (3000) and c (900) leave n1 44 MiB free, b and d the same on n2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_request_validation import OWNER, Site, build_site
from workspace.domain.states import Op
from workspace.errors import ResourceExhausted
from workspace.node.v1 import nodes_pb2
from workspace.ops import nodes, queue
from workspace.ops.admission import HELD, HELD_NORMAL
from workspace.scheduler.explain import Explanation, explain_file
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


def dump_and_explain(
    site: Site, tmp: Path, memory_mib: int, preemptible: bool = False
) -> tuple[dict[str, Any], Explanation]:
    text = nodes.scheduler_input(site.core.env, "", 1, memory_mib, (), {}, preemptible)
    path = tmp / "input.json"
    path.write_text(text)
    return json.loads(text), explain_file(path)


def test_dump_and_explain_show_the_nodes_the_queue_holds(full: Site, tmp_path: Path) -> None:
    site = full
    gone(site, "c")  # n1: 1018 MiB free, the only node a 900 MiB request fits on
    site.create(name="p", memory_mib=2000, preemptible=True, wait_for_capacity_s=600)
    doc, story = dump_and_explain(site, tmp_path, 900)
    # The preemptible head holds n1 only against preemptible requests: a normal one fits.
    assert doc["held_preemptible"] == {"n1": HELD} and "held" not in doc
    assert story.placement.placements is not None
    assert story.placement.placements[0].node == "n1"
    assert f"Held against preemptible requests only (a normal one may use them):\n  n1: {HELD}" in (
        story.render_text()
    )
    # A normal request waiting behind it holds n1 against normal ones too.
    site.clock.now += 1
    site.create(name="w", memory_mib=2000, wait_for_capacity_s=600)
    doc, story = dump_and_explain(site, tmp_path, 900)
    assert doc["held"] == {"n1": HELD_NORMAL} and "held_preemptible" not in doc
    assert story.placement.placements is None  # as a create now is refused
    assert story.placement.rejected == {HELD_NORMAL: 1, "have too little free memory": 1}
    verdicts = {v.node: v for v in story.steps[0].verdicts}
    assert verdicts["n1"].rejections == (("capacity-queue", HELD_NORMAL),)
    text = story.render_text()
    assert f"n1  rejected  capacity-queue: {HELD_NORMAL}" in text
    assert f"Held (a new request may not use them):\n  n1: {HELD_NORMAL}" in text
    assert story.to_dict()["held"] == {"n1": HELD_NORMAL}
    with pytest.raises(ResourceExhausted, match=f"1 node\\(s\\) {HELD_NORMAL}"):
        site.create(name="n", memory_mib=900)


def test_dump_and_explain_show_preempted_workspaces_still_stopping(
    tmp_path: Path,
) -> None:
    site = build_site(tmp_path, memory_mib=4096)
    victim = site.create(name="v", memory_mib=3000, preemptible=True)
    site.report(victim.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    taker = site.create(name="t", memory_mib=3000)  # preempts v, which stops with a grace
    assert taker.node == "n1"
    assert site.core.get(OWNER, "v").state == WS.WORKSPACE_STATE_STOPPING
    # n1 looks over-full (v keeps its claim until it is gone), yet a normal create of
    # 512 MiB is placed there, to wait for v: the dump says so, and explain agrees.
    doc, story = dump_and_explain(site, tmp_path, 512)
    assert [v["id"] for v in doc["pending"]] == [victim.id] and "victims" not in doc
    assert story.placement.placements is None and story.fits
    text = story.render_text()
    assert "placed only once workspaces preempted earlier have stopped" in text
    assert "Preempted earlier, still stopping (their claims count until they end):" in text
    assert "  n1: 1 workspace(s), 1 vCPU(s), 3078 MiB" in text
    assert "would be placed on n1 without preempting more" in text
    assert story.to_dict()["pending"] == [
        {"node": "n1", "workspaces": 1, "cpus": 1, "memory_mib": 3078}
    ]
    assert site.create(name="u", memory_mib=512).node == "n1"


def test_dump_and_explain_of_a_preemptible_request_leave_out_every_held_node(
    full: Site, tmp_path: Path
) -> None:
    """A preemptible head holds n1 against preemptible requests: the normal dump places a
    request there (a normal create would be), `--preemptible` does not, as a live
    preemptible create is refused; either way explain is asked, it agrees with it."""
    site = full
    gone(site, "c")  # n1: 1018 MiB free, the only node a 900 MiB request fits on
    site.create(name="p", memory_mib=2000, preemptible=True, wait_for_capacity_s=600)
    doc, story = dump_and_explain(site, tmp_path, 900, preemptible=True)
    assert doc["preemptible"] is True
    assert doc["held"] == {"n1": HELD} and "held_preemptible" not in doc
    assert story.placement.placements is None and not story.fits
    verdicts = {v.node: v for v in story.steps[0].verdicts}
    assert verdicts["n1"].rejections == (("capacity-queue", HELD),)
    text = story.render_text()
    assert text.startswith("Placement: does not fit (policy ")
    assert ", preemptible): member request does not fit" in text.splitlines()[0]
    assert "a preemptible request preempts nobody" in text
    assert story.to_dict()["preemptible"] is True
    # A normal dump explained as preemptible says the same.
    _, normal = dump_and_explain(site, tmp_path, 900)
    assert normal.placement.placements is not None
    again = explain_file(tmp_path / "input.json", preemptible=True)
    assert again.placement.placements is None and again.held == {"n1": HELD}
    with pytest.raises(ResourceExhausted, match=f"1 node\\(s\\) {HELD}"):
        site.create(name="q", memory_mib=900, preemptible=True)


def test_a_preemptible_request_is_explained_without_preemption(tmp_path: Path) -> None:
    """A normal request that fits only by preempting is "placed only by preempting"; a
    preemptible one preempts nobody: the dump carries no victims, explain says it does
    not fit (exit 1), as a live preemptible create is refused."""
    site = build_site(tmp_path, memory_mib=4096)
    victim = site.create(name="v", memory_mib=3000, preemptible=True)
    site.report(victim.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    doc, story = dump_and_explain(site, tmp_path, 3000)
    assert [v["id"] for v in doc["victims"]] == [victim.id] and story.fits
    doc, story = dump_and_explain(site, tmp_path, 3000, preemptible=True)
    assert "victims" not in doc and not story.fits
    assert story.preemption is None
    with pytest.raises(ResourceExhausted):
        site.create(name="t", memory_mib=3000, preemptible=True)
