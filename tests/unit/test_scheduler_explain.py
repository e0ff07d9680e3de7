"""Saved scheduler input (JSON) and the offline explanation of a placement."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.errors import InvalidArgument
from workspace.scheduler import Affinity, NodeView, Request, from_json, place_group, to_json
from workspace.scheduler.explain import explain, explain_file, main

ROOT = Path(__file__).resolve().parents[2]
D1 = "sha256:" + "1" * 64

NODES = [
    NodeView("node-a", "READY", 8, 8192, hypervisor="kvm", networks=("default",)),
    NodeView(
        "node-b",
        "READY",
        8,
        16384,
        used_memory_mib=4000,
        hypervisor="kvm",
        networks=("default",),
        cached_digests=frozenset({D1}),
    ),
    NodeView("node-c", "DRAINING", 8, 16384, hypervisor="kvm", networks=("default",)),
    NodeView("node-d", "READY", 8, 2048, hypervisor="kvm", networks=("default",)),
    NodeView("node-e", "READY", 8, 16384, hypervisor="xen", networks=("default",)),
]
REQUESTS = [
    Request(2, 4096, ("default",), (D1,), {"hypervisor": "kvm"}, member="head"),
    Request(2, 2048, ("default",), (), {"hypervisor": "kvm"}, member="worker-1"),
    Request(2, 2048, ("default",), (), {"hypervisor": "kvm"}, member="worker-2"),
]
CFG = SchedulerConfig(policy="pack", reserved_memory_mib=0)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.json"
    path.write_text(text)
    return path


# -- the JSON format -----------------------------------------------------------------------


def test_format_is_versioned_and_complete() -> None:
    data = json.loads(to_json(NODES, REQUESTS, CFG, Affinity.HARD_ANTI))
    assert data["version"] == 1
    assert data["affinity"] == "HARD_ANTI"
    assert data["config"] == asdict(CFG)
    assert data["nodes"][1]["cached_digests"] == [D1]
    assert data["requests"][0] == {
        "member": "head",
        "cpus": 2,
        "memory_mib": 4096,
        "networks": ["default"],
        "digests": [D1],
        "requirements": {"hypervisor": "kvm"},
    }


def test_round_trip() -> None:
    text = to_json(NODES, REQUESTS, CFG, Affinity.SOFT)
    assert from_json(text) == (NODES, REQUESTS, CFG, Affinity.SOFT)
    assert to_json(*from_json(text)) == text


@settings(max_examples=100, deadline=None)
@given(
    nodes=st.lists(
        st.builds(
            NodeView,
            name=st.text(min_size=1, max_size=8),
            state=st.sampled_from(["READY", "DRAINING", "DOWN"]),
            cpus=st.integers(0, 512),
            memory_mib=st.integers(0, 1 << 40),
            used_cpus=st.integers(0, 512),
            used_memory_mib=st.integers(0, 1 << 40),
            hypervisor=st.text(max_size=5),
            labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            networks=st.lists(st.text(max_size=5), max_size=3).map(tuple),
            cached_digests=st.frozensets(st.text(max_size=8), max_size=3),
        ),
        max_size=5,
        unique_by=lambda n: n.name,
    ),
    requests=st.lists(
        st.builds(
            Request,
            cpus=st.integers(1, 64),
            memory_mib=st.integers(1, 1 << 20),
            networks=st.lists(st.text(max_size=5), max_size=3).map(tuple),
            digests=st.lists(st.text(max_size=8), max_size=3).map(tuple),
            requirements=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            member=st.text(max_size=10),
        ),
        max_size=5,
    ),
    affinity=st.sampled_from(list(Affinity)),
    policy=st.sampled_from(["pack", "spread", "first"]),
    cpu_overcommit=st.floats(0.5, 16, allow_nan=False),
)
def test_round_trip_property(
    nodes: list[NodeView],
    requests: list[Request],
    affinity: Affinity,
    policy: str,
    cpu_overcommit: float,
) -> None:
    cfg = SchedulerConfig(policy=policy, cpu_overcommit=cpu_overcommit)
    assert from_json(to_json(nodes, requests, cfg, affinity)) == (nodes, requests, cfg, affinity)


def test_optional_keys_take_defaults() -> None:
    text = json.dumps(
        {
            "version": 1,
            "nodes": [{"name": "a", "state": "READY", "cpus": 4, "memory_mib": 4096}],
            "requests": [{"cpus": 1, "memory_mib": 512}],
        }
    )
    nodes, requests, cfg, affinity = from_json(text)
    assert nodes == [NodeView("a", "READY", 4, 4096)]
    assert requests == [Request(1, 512)]
    assert cfg == SchedulerConfig()
    assert affinity is Affinity.NONE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "unsupported version 2"),
        ({"extra": 1}, "unknown key(s) extra"),
        ({"affinity": "SIDEWAYS"}, "unknown affinity 'SIDEWAYS'"),
        ({"config": {"policy": "random"}}, "scheduler.policy: 'random' is not one of"),
        ({"config": {"cpu_overcommit": "lots"}}, "input.config"),
        ({"config": {"colour": "blue"}}, "unknown key(s) colour"),
        ({"nodes": [{"name": "a"}]}, "nodes[0]: missing key(s) cpus, memory_mib, state"),
        (
            {"nodes": [{"name": "a", "state": "READY", "cpus": "4", "memory_mib": 1}]},
            "nodes[0].cpus: expected int",
        ),
        (
            {"nodes": [{"name": "a", "state": "READY", "cpus": True, "memory_mib": 1}]},
            "nodes[0].cpus: expected int",
        ),
        (
            {"nodes": [{"name": "a", "state": "READY", "cpus": 1, "memory_mib": 1}] * 2},
            "duplicate node name(s) a",
        ),
        ({"requests": [{"cpus": 1, "memory_mib": 1, "networks": "x"}]}, "expected list"),
        ({"requests": [{"cpus": 1, "memory_mib": 1, "labels": {}}]}, "unknown key(s) labels"),
    ],
)
def test_bad_input_is_refused_with_where(change: dict[str, object], message: str) -> None:
    data = json.loads(to_json(NODES[:1], REQUESTS[:1], CFG))
    data |= change
    with pytest.raises(InvalidArgument) as exc:
        from_json(json.dumps(data))
    assert message in exc.value.message


def test_not_json() -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        from_json("{")


# -- explain -----------------------------------------------------------------------------


def test_explanation_names_every_filters_verdict_per_node() -> None:
    story = explain(NODES, REQUESTS, CFG, Affinity.HARD_ANTI)
    assert story.placement == place_group(NODES, REQUESTS, CFG, Affinity.HARD_ANTI)
    assert story.placement.failed_member == "worker-2"
    assert [s.member for s in story.steps] == ["head", "worker-1", "worker-2"]
    first = {v.node: v for v in story.steps[0].verdicts}
    assert first["node-b"].chosen and first["node-b"].passed
    assert dict(first["node-b"].weights) == {
        "pack": pytest.approx(0.49951171875),
        "image-cache": 100.0,
    }
    assert first["node-a"].passed and not first["node-a"].chosen
    assert (first["node-c"].filter, first["node-c"].reason) == ("state", "are DRAINING")
    assert (first["node-d"].filter, first["node-d"].reason) == (
        "memory",
        "have too little free memory",
    )
    assert (first["node-e"].filter, first["node-e"].reason) == (
        "requirements",
        "do not match hypervisor=kvm",
    )
    last = {v.node: v for v in story.steps[2].verdicts}
    assert last["node-a"].filter == "hard-anti-affinity"
    assert last["node-b"].filter == "hard-anti-affinity"

    text = story.render_text()
    assert text.startswith("Placement: does not fit (policy pack, affinity HARD_ANTI, 5 node(s)): ")
    assert "member worker-2 does not fit: 2 node(s) already hold a member" in text
    for line in (
        "node-c  rejected  state: are DRAINING",
        "node-d  rejected  memory: have too little free memory",
        "node-e  rejected  requirements: do not match hypervisor=kvm",
        "node-b  chosen    score 100.499512  (pack 0.499512, image-cache 100.000000)",
        "node-a  rejected  hard-anti-affinity: already hold a member of the group",
    ):
        assert line in text

    data = story.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["placed"] is False and data["failed_member"] == "worker-2"
    verdicts = data["steps"][0]["verdicts"]
    assert verdicts[2] == {
        "node": "node-c",
        "verdict": "rejected",
        "filter": "state",
        "reason": "are DRAINING",
        "rejections": [{"filter": "state", "reason": "are DRAINING"}],
    }
    assert verdicts[1]["verdict"] == "chosen"


def test_every_filter_that_rejects_a_node_is_named_not_only_the_first() -> None:
    # node-x is draining, too small, of the wrong type and lacks both labels: an admin
    # asking why nothing fits sees every reason, not just "are DRAINING".
    nodes = [
        NodeView("node-x", "DRAINING", 2, 1024, hypervisor="xen", labels={"gpu": "v100"}),
        NodeView("node-y", "READY", 8, 16384, hypervisor="kvm", labels={"gpu": "a100"}),
    ]
    req = Request(10, 4096, (), (), {"gpu": "a100", "hypervisor": "kvm", "rack": "r1"})
    story = explain(nodes, [req], CFG)
    verdicts = {v.node: v for v in story.steps[0].verdicts}
    x = verdicts["node-x"]
    assert (x.filter, x.reason) == ("state", "are DRAINING")  # the placement's reason
    assert x.rejections == (
        ("state", "are DRAINING"),
        ("requirements", "do not match gpu=a100"),
        ("requirements", "do not match hypervisor=kvm"),
        ("requirements", "do not match rack=r1"),
        ("cpu", "have too few free CPUs"),
        ("memory", "have too little free memory"),
    )
    assert verdicts["node-y"].rejections == (("requirements", "do not match rack=r1"),)
    # the placement's own counts still name one reason per node
    assert story.placement.rejected == {"are DRAINING": 1, "do not match rack=r1": 1}
    assert (
        "node-x  rejected  state: are DRAINING; requirements: do not match gpu=a100; "
        "requirements: do not match hypervisor=kvm; requirements: do not match rack=r1; "
        "cpu: have too few free CPUs; memory: have too little free memory"
    ) in story.render_text()
    got = story.to_dict()["steps"][0]["verdicts"][0]
    assert got["filter"] == "state"
    assert [(r["filter"], r["reason"]) for r in got["rejections"]] == list(x.rejections)


def test_held_nodes_are_left_out_and_named_and_bad_held_input_is_refused(tmp_path: Path) -> None:
    why = "are held for the request waiting at the head of the capacity queue"
    data = json.loads(to_json(NODES, REQUESTS[:1], CFG)) | {"held": {"node-b": why}}
    story = explain_file(write(tmp_path, json.dumps(data)))
    assert story.placement.placements is not None
    assert story.placement.placements[0].node == "node-a"  # node-b caches its image
    verdicts = {v.node: v for v in story.steps[0].verdicts}
    assert verdicts["node-b"].rejections == (("capacity-queue", why),)
    assert [v.node for v in story.steps[0].verdicts] == [n.name for n in NODES]
    assert story.node_count == 5
    with pytest.raises(InvalidArgument, match=r"input\.held: expected dict"):
        explain_file(write(tmp_path, json.dumps(data | {"held": ["node-b"]})))


def test_successful_explanation_lists_placements_in_callers_order() -> None:
    story = explain(NODES, REQUESTS, CFG, Affinity.NONE)
    assert story.placement == place_group(NODES, REQUESTS, CFG)
    assert story.placement.placements is not None
    assert story.not_tried == ()
    text = story.render_text()
    assert text.startswith("Placement: placed all 3 request(s) (policy pack, affinity NONE")
    assert "  head      -> node-b" in text
    data = story.to_dict()
    assert [p["member"] for p in data["placements"]] == ["head", "worker-1", "worker-2"]


def test_members_after_a_failure_are_listed_as_not_tried() -> None:
    reqs = [Request(1, 99999, member="huge"), Request(1, 512, member="tiny")]
    story = explain(NODES, reqs, CFG)
    assert story.not_tried == ("tiny",)
    assert "Not tried (an earlier member did not fit): tiny" in story.render_text()


def test_first_fit_explanation_says_name_order() -> None:
    story = explain(NODES[:2], REQUESTS[1:2], SchedulerConfig(policy="first"))
    assert "node-a  chosen    (no weigher active: name order)" in story.render_text()


# -- replay: the CLI entry ------------------------------------------------------------------


def test_replay_twice_gives_identical_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, to_json(NODES, REQUESTS, CFG, Affinity.SOFT_ANTI))
    outputs = []
    for output in ("text", "text", "json", "json"):
        assert main([str(path), "--output", output]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3]
    assert json.loads(outputs[2]) == explain_file(path).to_dict()
    assert explain_file(path).render_text() == outputs[0]


def test_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(write(tmp_path, to_json(NODES, REQUESTS, CFG, Affinity.HARD_ANTI)))]) == 1
    assert main([str(write(tmp_path, '{"version": 7}'))]) == 2
    assert "missing key(s) nodes, requests" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.json")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_python_dash_m(tmp_path: Path) -> None:
    path = write(tmp_path, to_json(NODES, REQUESTS, CFG))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "workspace.scheduler.explain", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == explain_file(path).render_text()
