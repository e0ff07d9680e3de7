"""Preemption over real gRPC with fake-driver agents: a normal request that does not fit
takes the capacity of the fewest preemptible workspaces; nothing is double-booked."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.virt.base import DomainState
from tests.functional.harness import WS, Site, SitePki, TlsSite, wait_for
from tests.functional.test_metrics import promtool_check, scrape, value
from workspace.scheduler.explain import explain_file
from workspace.v1 import (
    admin_pb2,
    clusters_pb2,
    clusters_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)

# 1024 MiB guests claim 1098 MiB (overhead): three fill a 4096 MiB node (802 MiB left).
SMALL = 1024
NODE = {"cpus": 4, "memory_mib": 4096}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, preempt_grace_s=2)
    s.stubs.network()
    s.stubs.import_image("img")
    try:
        yield s
    finally:
        s.close()


def make(site: Site, name: str, memory_mib: int = SMALL, preemptible: bool = True, **kw):
    return site.stubs.create(name=name, memory_mib=memory_mib, preemptible=preemptible, **kw)


def running_ids(site: Site, node: str) -> set[str]:
    return {
        d.workspace_id
        for d in site.agents[node].driver.list_domains()
        if d.state is DomainState.RUNNING
    }


def events(site: Site) -> list[admin_pb2.SiteEvent]:
    return list(site.stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=False)))


def node_used(site: Site, name: str) -> tuple[int, int]:
    for n in site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes:
        if n.name == name:
            return n.used_cpus, n.used_memory_mib
    raise AssertionError(name)


class Overlap:
    """Watches a node's fake domains in a thread: records any moment at which more of
    them run than ``limit``."""

    def __init__(self, site: Site, node: str, limit: int) -> None:
        self.site, self.node, self.limit = site, node, limit
        self.worst = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.worst = max(self.worst, len(running_ids(self.site, self.node)))
            self.stop.wait(0.005)

    def close(self) -> int:
        self.stop.set()
        self.t.join()
        return self.worst


def test_normal_create_preempts_the_fewest_and_waits_for_them(site: Site) -> None:
    site.add_agent("node1", **NODE)
    small = [make(site, f"p{i}") for i in range(3)]  # node1 is full
    site.add_agent("node2", **NODE)
    big = make(site, "pbig", memory_mib=2048)  # node2: 2124 MiB + 1098 MiB
    other = make(site, "pother")
    assert {w.node for w in small} == {"node1"} and {big.node, other.node} == {"node2"}
    for w in [*small, big, other]:
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    used_before = node_used(site, "node2")
    watch = Overlap(site, "node2", 2)

    new = make(site, "normal", memory_mib=2048, preemptible=False)
    # node1 would need two victims, node2 one: node2, and its 2 GiB one
    assert new.node == "node2"
    assert new.state == WS.WORKSPACE_STATE_SCHEDULED
    assert "waiting for 1 preempted workspace(s) to stop" in new.reason
    victim = site.stubs.get(big.id)
    assert victim.state in (WS.WORKSPACE_STATE_STOPPING, WS.WORKSPACE_STATE_TERMINATED)
    assert victim.reason.startswith("PREEMPTED: its capacity was given to")
    assert f"normal ({new.id})" in victim.reason
    # the victim keeps its claim until it is gone: the node is over-claimed meanwhile
    assert node_used(site, "node2")[1] >= used_before[1]

    site.stubs.wait_state(new.id, WS.WORKSPACE_STATE_RUNNING)
    gone = site.stubs.wait_state(big.id, WS.WORKSPACE_STATE_TERMINATED)
    assert gone.reason.startswith("PREEMPTED")
    assert watch.close() <= 2  # never the victim and the new one running together
    for w in [*small, other]:
        assert site.stubs.get(w.id).state == WS.WORKSPACE_STATE_RUNNING
    assert site.stubs.get(new.id).reason == ""
    # claims: the victim's released once, the new one's held
    cpus, mem = node_used(site, "node2")
    assert (cpus, mem) == used_before  # a 2 GiB victim's claim became a 2 GiB workspace's

    evs = events(site)
    decisions = [e for e in evs if e.kind == "preemption"]
    assert len(decisions) == 1 and "pbig" in decisions[0].reason
    assert decisions[0].workspace_id == new.id
    preempted = [e for e in evs if e.kind == "workspace.preempted"]
    assert [(e.workspace_id, e.subject) for e in preempted] == [(big.id, big.owner)]
    states = [e.state for e in evs if e.kind == "workspace.state" and e.workspace_id == big.id]
    assert states[-1] == "TERMINATED"


def test_preemptible_create_never_preempts(site: Site) -> None:
    site.add_agent("node1", **NODE)
    ps = [make(site, f"p{i}") for i in range(3)]
    with pytest.raises(grpc.RpcError) as err:
        make(site, "another", preemptible=True)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cannot place another" in err.value.details()
    for w in ps:
        got = site.stubs.get(w.id)
        assert got.state != WS.WORKSPACE_STATE_STOPPING and got.reason == ""
    assert not [e for e in events(site) if e.kind in ("preemption", "workspace.preempted")]


def test_not_even_preemption_fits_it_changes_nothing(site: Site) -> None:
    site.add_agent("node1", **NODE)
    ps = [make(site, f"p{i}") for i in range(3)]
    before = node_used(site, "node1")
    with pytest.raises(grpc.RpcError) as err:
        make(site, "huge", memory_mib=4096, preemptible=False)  # 4170 MiB > 4096
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "does not fit" in err.value.details()
    assert node_used(site, "node1") == before
    for w in ps:
        assert site.stubs.get(w.id).reason == ""


def clusters(site: Site) -> clusters_pb2_grpc.ClustersStub:
    return clusters_pb2_grpc.ClustersStub(site.stubs.channel)


def member(role: str, count: int, memory_mib: int = 2048) -> clusters_pb2.ClusterMember:
    return clusters_pb2.ClusterMember(
        role=role, image="img", cpus=1, memory_mib=memory_mib, count=count
    )


def test_cluster_preempts_all_or_nothing(site: Site) -> None:
    site.add_agent("node1", **NODE)
    site.add_agent("node2", **NODE)
    ps = [make(site, f"p{i}") for i in range(6)]  # three per node
    assert sorted(w.node for w in ps).count("node1") == 3
    used = {n: node_used(site, n) for n in ("node1", "node2")}
    with pytest.raises(grpc.RpcError) as err:  # three members, one per node: two nodes
        clusters(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="mpi",
                members=[member("worker", 3)],
                affinity=clusters_pb2.AFFINITY_HARD_ANTI,
            )
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert {n: node_used(site, n) for n in ("node1", "node2")} == used
    for w in ps:
        got = site.stubs.get(w.id)
        assert got.reason == "" and got.state != WS.WORKSPACE_STATE_STOPPING

    c = clusters(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="mpi", members=[member("worker", 2)], affinity=clusters_pb2.AFFINITY_HARD_ANTI
        )
    )
    assert {m.node for m in c.members} == {"node1", "node2"}
    # each 2 GiB member needs two of its node's three 1 GiB victims
    preempted = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
    assert len(preempted) == 4
    wait_for(
        lambda: (
            clusters(site).GetCluster(clusters_pb2.ClusterRef(id="mpi")).state
            == clusters_pb2.CLUSTER_STATE_RUNNING
        ),
        what="cluster RUNNING",
    )
    for w in preempted:
        assert site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED).reason.startswith(
            "PREEMPTED"
        )
    decisions = [e for e in events(site) if e.kind == "preemption"]
    assert len(decisions) == 1 and decisions[0].cluster


def test_victim_that_ignores_acpi_is_forced_after_the_grace(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    site.add_agent("node1", fake={"ignore_shutdown": ["stubborn*"]}, **NODE)
    ps = [make(site, f"stubborn{i}") for i in range(3)]
    for w in ps:
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    watch = Overlap(site, "node1", 3)
    new = make(site, "normal", memory_mib=SMALL, preemptible=False)
    assert new.node == "node1"
    victims = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
    assert len(victims) == 1
    # the held order: the node is not sent the new workspace while the victim runs
    assert new.id not in running_ids(site, "node1")
    site.stubs.wait_state(new.id, WS.WORKSPACE_STATE_RUNNING)
    assert site.stubs.get(victims[0].id).state == WS.WORKSPACE_STATE_TERMINATED
    assert watch.close() <= 3
    said = f"workspace {victims[0].id} ({victims[0].name}) did not power off within 2 s; forcing"
    assert said in caplog.text
    console = site.agents["node1"].driver.list_domains()
    assert victims[0].id not in {d.workspace_id for d in console}


def test_idempotent_retry_preempts_once(site: Site) -> None:
    site.add_agent("node1", **NODE)
    ps = [make(site, f"p{i}") for i in range(3)]
    req = {"name": "normal", "memory_mib": SMALL, "request_id": "r-1"}
    first = site.stubs.create(**req)
    again = site.stubs.create(**req)
    assert again.id == first.id
    preempted = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
    assert len(preempted) == 1
    assert len([e for e in events(site) if e.kind == "preemption"]) == 1


def test_queued_normal_request_preempts_when_processed(site: Site) -> None:
    site.add_agent("node1", **NODE)
    normal = make(site, "n1", preemptible=False)
    ps = [make(site, f"p{i}") for i in range(2)]
    # 3072 MiB claims 3150: even with both victims gone 2998 MiB would be free
    queued = make(site, "big", memory_mib=3072, preemptible=False, wait_for_capacity_s=60)
    assert queued.state == WS.WORKSPACE_STATE_PENDING
    for w in ps:
        assert site.stubs.get(w.id).reason == ""
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(normal.id))
    site.stubs.wait_state(queued.id, WS.WORKSPACE_STATE_RUNNING)
    for w in ps:
        got = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
        assert got.reason.startswith("PREEMPTED") and f"({queued.id})" in got.reason


def test_victims_node_down_mid_preemption_is_not_stuck(tmp_path: Path) -> None:
    # node_grace_s well above the heartbeat interval (1 s): node1 must stay up until it is
    # stopped, and after it comes back, on a busy machine too.
    site = Site(tmp_path, preempt_grace_s=30, node_grace_s=8)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        # the victims ignore ACPI and get 30 s: the node goes away mid-preemption
        site.add_agent("node1", fake={"ignore_shutdown": ["p*"]}, **NODE)
        ps = [make(site, f"p{i}") for i in range(3)]
        for w in ps:
            site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        new = make(site, "normal", memory_mib=SMALL, preemptible=False)
        site.stop_agent("node1")
        wait_for(
            lambda: all(
                n.state == admin_pb2.NODE_STATE_DOWN
                for n in site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
            ),
            60,
            what="node1 DOWN",
        )
        assert site.stubs.get(new.id).state == WS.WORKSPACE_STATE_LOST
        # the node comes back: the agent converges, the victim goes, the new one runs
        site.add_agent("node1", fake={"ignore_shutdown": ["p*"]}, **NODE)
        site.stubs.wait_state(new.id, WS.WORKSPACE_STATE_RUNNING, timeout_s=60)
        victims = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
        assert len(victims) == 1
        assert site.stubs.get(victims[0].id).state == WS.WORKSPACE_STATE_TERMINATED
        others = [w for w in ps if w.id != victims[0].id]
        for w in others:
            site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    finally:
        site.close()


def test_scheduler_input_carries_the_victims_and_explain_says_preemption(
    site: Site, tmp_path: Path
) -> None:
    site.add_agent("node1", **NODE)
    ps = [make(site, f"p{i}") for i in range(3)]
    text = site.stubs.admin.GetSchedulerInput(
        admin_pb2.SchedulerInputRequest(memory_mib=2048, networks=["default"])
    ).json
    doc = json.loads(text)
    assert sorted(v["id"] for v in doc["victims"]) == sorted(w.id for w in ps)
    path = tmp_path / "input.json"
    path.write_text(text)
    result = explain_file(path)
    assert result.placement.placements is None
    assert "by preempting 2 preemptible workspace(s)" in result.render_text()
    # nothing was preempted by asking
    assert all(site.stubs.get(w.id).reason == "" for w in ps)


def test_concurrent_creates_never_share_a_victim_nor_double_book(site: Site) -> None:
    site.add_agent("node1", cpus=8, memory_mib=8192)
    ps = [make(site, f"p{i}") for i in range(7)]  # 7 x 1098 MiB of 8192
    for w in ps:
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    results: dict[int, object] = {}

    def create(i: int) -> None:
        try:
            results[i] = make(site, f"n{i}", preemptible=False)
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [r for r in results.values() if not isinstance(r, grpc.RpcError)]
    refused = [r for r in results.values() if isinstance(r, grpc.RpcError)]
    # each takes one victim (the capacity of those already stopping counts): 7 fit
    assert len(made) == 7 and len(refused) == 3
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    made_ids = {w.id for w in made}  # type: ignore[attr-defined]
    victims = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
    # every victim was taken by one create that was answered with its workspace
    for w in victims:
        assert site.stubs.get(w.id).reason.rsplit("(", 1)[1].rstrip(")") in made_ids
    for wid in made_ids:
        site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING)
    for w in victims:
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    live = len(made_ids) + len(ps) - len(victims)
    assert live * 1098 <= 8192  # never more than fit
    assert node_used(site, "node1") == (live, live * 1098)
    assert len(running_ids(site, "node1")) == live


def test_capacity_of_workspaces_already_stopping_goes_to_the_next_request(site: Site) -> None:
    site.add_agent("node1", fake={"ignore_shutdown": ["p*"]}, **NODE)
    ps = [make(site, f"p{i}") for i in range(3)]
    for w in ps:
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    watch = Overlap(site, "node1", 3)
    first = make(site, "first", memory_mib=2048, preemptible=False)  # two victims
    # 874 MiB of the two victims' capacity is left over: enough for a 512 MiB one, which
    # preempts nobody more but waits for them too
    second = make(site, "second", memory_mib=512, preemptible=False)
    assert second.node == "node1" and second.state == WS.WORKSPACE_STATE_SCHEDULED
    assert "waiting for 2 preempted workspace(s) to stop" in second.reason
    assert second.id not in running_ids(site, "node1")
    victims = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
    assert len(victims) == 2
    assert all(f"({first.id})" in site.stubs.get(w.id).reason for w in victims)
    for w in (first, second):
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    assert watch.close() <= 3
    spared = [w for w in ps if w not in victims]
    assert site.stubs.get(spared[0].id).state == WS.WORKSPACE_STATE_RUNNING
    decisions = [e for e in events(site) if e.kind == "preemption"]
    assert len(decisions) == 2 and "already stopping on node1" in decisions[1].reason


def test_preemptions_are_counted_in_the_metrics(tmp_path: Path) -> None:
    site = Site(tmp_path, metrics_listen="127.0.0.1:0", preempt_grace_s=2)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", **NODE)
        for i in range(3):
            make(site, f"p{i}")
        make(site, "normal", memory_mib=2048, preemptible=False)  # two victims
        assert site.service is not None
        url = site.service.metrics_url
        text = wait_for(
            lambda: (t := scrape(url)) and value(t, "workspace_preempted_total") == 2 and t,
            what="two preempted counted",
        )
        assert value(text, "workspace_preemptions_total") == 1
        promtool_check(text)
    finally:
        site.close()


def test_the_victims_owner_sees_it_in_a_watch_and_a_queued_preemptible_never_preempts(
    site: Site,
) -> None:
    site.add_agent("node1", **NODE)
    ps = [make(site, f"p{i}") for i in range(3)]
    for w in ps:
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    # a preemptible request that waits for capacity: stays PENDING, preempts nobody
    waiting = make(site, "patient", wait_for_capacity_s=60)
    assert waiting.state == WS.WORKSPACE_STATE_PENDING
    assert all(site.stubs.get(w.id).reason == "" for w in ps)
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(waiting.id))
    seen: list[tuple[str, int, str]] = []
    stream = site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
    done = threading.Event()

    def follow() -> None:
        for ev in stream:
            w = ev.workspace
            seen.append((w.id, w.state, w.reason))
            if w.state == WS.WORKSPACE_STATE_TERMINATED and w.reason.startswith("PREEMPTED"):
                done.set()
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    make(site, "normal", memory_mib=SMALL, preemptible=False)
    assert done.wait(20)
    stream.cancel()
    (victim,) = [w.id for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
    mine = [(st, r) for wid, st, r in seen if wid == victim]
    assert (WS.WORKSPACE_STATE_STOPPING, mine[-1][1]) in mine
    assert mine[-1][0] == WS.WORKSPACE_STATE_TERMINATED and mine[-1][1].startswith("PREEMPTED")


def test_preemption_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    site = Site(tmp_path, database_url=pg_url, preempt_grace_s=2)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", **NODE)
        ps = [make(site, f"p{i}") for i in range(3)]
        for w in ps:
            site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        watch = Overlap(site, "node1", 3)
        new = make(site, "normal", memory_mib=2048, preemptible=False)
        assert "waiting for 2 preempted workspace(s) to stop" in new.reason
        site.stubs.wait_state(new.id, WS.WORKSPACE_STATE_RUNNING)
        victims = [w for w in ps if site.stubs.get(w.id).reason.startswith("PREEMPTED")]
        assert len(victims) == 2
        for w in victims:
            site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
        assert watch.close() <= 3
    finally:
        site.close()


def test_a_victim_of_another_project_is_not_told_whose_workspace_took_its_place(
    tmp_path: Path,
) -> None:
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), preempt_grace_s=0)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", **NODE)
        for name in ("phys", "chem"):
            projects_pb2_grpc.ProjectsStub(site.stubs.channel).CreateProject(
                projects_pb2.Project(name=name)
            )
        alice = site.identity("alice", projects=("phys",))
        bob = site.identity("bob", projects=("phys",))
        carol = site.identity("carol", projects=("chem",))
        mate = bob.create(name="mate", memory_mib=SMALL, preemptible=True)
        other = carol.create(name="other", memory_mib=SMALL, preemptible=True)
        filler = alice.create(name="filler", memory_mib=SMALL)
        for w in (mate, other, filler):
            site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        secret = alice.create(name="secret-plan", memory_mib=2 * SMALL)  # takes both
        seen = {w.name: w.reason for w in (bob.get(mate.id), carol.get(other.id))}
        # The project-mate may know who took it; the other tenant is not told.
        assert f"alice's secret-plan ({secret.id})" in seen["mate"], seen
        assert seen["other"] == (
            "PREEMPTED: its capacity was given to a normal workspace of another project"
        )
        for stubs, w in ((carol, other), (bob, mate)):
            gone = wait_for(
                lambda s=stubs, i=w.id: (
                    (g := s.get(i)).state == WS.WORKSPACE_STATE_TERMINATED and g
                ),
                what=f"{w.name} TERMINATED",
            )
            assert gone.reason == seen[w.name]
        # The admin's view names both.
        [pre] = [e for e in events(site) if e.kind == "preemption"]
        assert "secret-plan" in str(pre), pre
        assert "carol's other" in pre.reason, pre
        # Nor is the taker told whose workspaces it took: `ws events secret-plan` has
        # the preemption, by count.
        req = workspaces_pb2.WatchWorkspaceEventsRequest(id=secret.id, kinds=["preemption"])
        [told] = list(alice.ws.WatchWorkspaceEvents(req))
        assert told.reason == (
            "secret-plan of alice did not fit on free capacity; preempted 2 workspace(s)"
        )
        assert "carol" not in str(told) and other.id not in str(told), told
        # Nor is the victim told by whom, in its events: the service took it, not alice.
        theirs = list(carol.ws.WatchWorkspaceEvents(
            workspaces_pb2.WatchWorkspaceEventsRequest(id=other.id)))  # fmt: skip
        assert "preempted" in {e.kind.split(".")[-1] for e in theirs}, theirs
        assert "user:alice" not in {e.who for e in theirs}, [(e.kind, e.who) for e in theirs]
        assert "alice" not in str(theirs) and "secret" not in str(theirs), theirs
        # The project-mate is: alice's secret-plan took it.
        mates = list(bob.ws.WatchWorkspaceEvents(
            workspaces_pb2.WatchWorkspaceEventsRequest(id=mate.id)))  # fmt: skip
        assert "user:alice" in {e.who for e in mates if e.kind == "workspace.preempted"}
    finally:
        site.close()
