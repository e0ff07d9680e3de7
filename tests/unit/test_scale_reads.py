"""What the service reads for work that repeats at a large site: the statements a pass or
a call sends, counted on the store's SQLite connections (the figures grow with the waiting
requests, the workspaces on a node, the clusters on a page; a statement each is what a
site of 1,000 nodes and 20,000 workspaces cannot afford). Through the operations and the
servicers' plain methods with a real SQLite store (tests/unit/test_request_validation.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from tests.unit.test_request_validation import OWNER, Site, build_site
from workspace import scheduler
from workspace.domain import seed
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.states import Op
from workspace.domain.tasks import ExecTask
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import clusters, create, leases, nodes, queue, seeds
from workspace.ops.rosters import RosterPusher
from workspace.store import Project, Workspace
from workspace.v1 import common_pb2

WS = common_pb2.WorkspaceState
HOUR = 3600
ALICE = Identity(Kind.USER, "alice", projects=("physics",))


class Statements:
    """The SQL statements the store's connections send while ``counting``."""

    def __init__(self, site: Site) -> None:
        self.sent: list[str] = []
        self.active = False
        event.listen(site.store.engine, "checkout", self._trace)
        site.store.engine.dispose()  # connections opened before: traced from their next use

    def _trace(self, dbapi_conn: Any, _record: object, _proxy: object) -> None:
        dbapi_conn.set_trace_callback(self._sent)

    def _sent(self, sql: str) -> None:
        if self.active:
            self.sent.append(sql)

    @contextmanager
    def counting(self) -> Iterator[list[str]]:
        self.sent = []
        self.active = True
        try:
            yield self.sent
        finally:
            self.active = False

    @staticmethod
    def reading(table: str, sent: list[str]) -> list[str]:
        return [s for s in sent if re.search(rf"^SELECT\b.*\sFROM {table}\b", s, re.S)]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path, cpus=4, memory_mib=4096)


def add_nodes(site: Site, count: int) -> None:
    for i in range(count):
        site.nodes.register(
            nodes_pb2.RegisterRequest(
                node=f"m{i}", hypervisor="fake", cpus=4, memory_mib=4096, networks=["default"]
            )
        )


def test_a_queue_pass_reads_the_nodes_once_not_per_waiting_request(site: Site) -> None:
    """Each blocked request of the capacity queue is tried in a transaction of its own;
    each read every node three times (its placement, its preemption, whether it could
    ever fit): 1,000 requests waiting at a site of 1,000 nodes made every pass read 3
    million node rows under the write lock, and took minutes."""
    add_nodes(site, 4)
    for i in range(5):  # each fills a node: 3000 MiB of 4096
        assert site.create(name=f"big{i}", memory_mib=3000).node
    waiting = 12
    for i in range(waiting):  # fits an empty node, none now
        w = site.create(name=f"wait{i}", memory_mib=3000, wait_for_capacity_s=3600)
        assert w.state == WS.WORKSPACE_STATE_PENDING
    count = Statements(site)
    queue.process(site.core.env)  # the first pass reads them (the views are kept)
    with count.counting() as sent:
        assert queue.process(site.core.env) == 0
    # Nothing changed between the passes: the nodes are not read again, however many wait.
    assert Statements.reading("nodes", sent) == []
    assert len(queue.list_queue(site.core.env)) == waiting


def full_report(site: Site, ids: list[str]) -> None:
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="n1",
            full=True,
            workspaces=[
                nodes_pb2.ObservedWorkspace(workspace_id=w, state=nodes_pb2.OBSERVED_STATE_RUNNING)
                for w in ids
            ],
        )
    )


def test_a_heartbeat_reads_its_workspaces_in_one_query_not_one_each(site: Site) -> None:
    """Every node sends a full report each heartbeat (5 s), naming each workspace it
    holds; each was read by a query of its own under the write lock: 200 heartbeats a
    second at 1,000 nodes, 20 workspaces each, were 4,000 queries a second."""
    ids = [site.create(name=f"w{i}", memory_mib=256).id for i in range(8)]
    assert {w.node for w in site.workspaces()} == {"n1"}
    full_report(site, ids)  # RUNNING now; the reports below change nothing
    count = Statements(site)
    with count.counting() as two:
        full_report(site, ids[:2])
    with count.counting() as eight:
        full_report(site, ids)
    assert len(Statements.reading("workspaces", eight)) == len(
        Statements.reading("workspaces", two)
    )
    assert {w.state for w in site.workspaces()} == {"RUNNING"}


def test_a_page_of_clusters_reads_their_members_at_once_not_per_cluster(site: Site) -> None:
    """`ws cluster list` (and an admin's list of every cluster) read each cluster's
    members, then their addresses, with queries of their own: two or more per cluster
    of the page, up to 500 a page."""
    add_nodes(site, 3)
    env = site.core.env
    for i in range(8):  # 5 members each: a page's NICs are read in one query (16 or more)
        members = (MemberSpec("head", "img", 1, 128), MemberSpec("worker", "img", 1, 128, 4))
        clusters.create(env, OWNER, ClusterRequest(f"c{i}", members))
    count = Statements(site)
    with count.counting() as four:
        page, token = clusters.list_page(env, OWNER, False, page_size=4)
    assert token and len(page) == 4
    with count.counting() as eight:
        listed = clusters.list_clusters(env, OWNER, False)
    assert len(eight) == len(four)
    # As each is shown alone: every member, in roster order.
    assert listed == [clusters.get(env, OWNER, c.name) for c in listed]
    assert sorted(c.name for c in listed) == [f"c{i}" for i in range(8)]
    assert [[m.role for m in c.members] for c in listed] == [["head", *["worker"] * 4]] * 8


def test_a_cluster_create_counts_its_networks_addresses_once_not_per_member(site: Site) -> None:
    """Each member's address was found after an aggregate over every address of its
    network: a 500-member cluster at a site of 20,000 addresses read 10 million rows
    under the write lock (4.6 s)."""
    add_nodes(site, 3)
    env = site.core.env
    count = Statements(site)

    def create(name: str, workers: int) -> list[str]:
        with count.counting() as sent:
            members = (MemberSpec("worker", "img", 1, 128, workers),)
            shown = clusters.create(env, OWNER, ClusterRequest(name, members))
        assert len(shown.members) == workers
        return [s for s in Statements.reading("ip_allocations", sent) if "count(" in s]

    assert len(create("small", 2)) == len(create("large", 8))
    # Lowest first, one each: .1 is the gateway.
    assert sorted(int(a.ip.rsplit(".", 1)[1]) for a in site.allocations()) == list(range(2, 12))


def test_the_queue_list_reads_the_waiting_rows_at_once_not_one_each(site: Site) -> None:
    """`ws-admin queue` read each waiting workspace with a query of its own."""
    assert site.create(name="big", memory_mib=3000).node

    def wait(count: int) -> list[str]:
        for i in range(count):
            w = site.create(name=f"w{count}-{i}", memory_mib=3000, wait_for_capacity_s=3600)
            assert w.state == WS.WORKSPACE_STATE_PENDING
        with Statements(site).counting() as sent:
            listed = queue.list_queue(site.core.env)
        assert all(e.memory_mib == 3000 and e.reason for e in listed)
        return Statements.reading("workspaces", sent)

    assert len(wait(2)) == len(wait(6))  # 2, then 8 waiting


def test_whether_a_waiting_request_could_ever_fit_is_judged_again_only_when_nodes_change(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pass asked of every blocked request whether it fits any node of the site
    made empty: every node emptied and a placement tried, per request (at 1,000 nodes,
    a fifth of a queue pass). The answer is kept while the nodes are unchanged; a node
    removed is judged anew, and the request that only fitted there fails."""
    env = site.core.env
    site.nodes.register(
        nodes_pb2.RegisterRequest(
            node="big", hypervisor="fake", cpus=8, memory_mib=8192, networks=["default"]
        )
    )
    filler = site.create(name="filler", memory_mib=7000)
    assert filler.node == "big"
    for i in range(4):  # fit only "big", and only empty
        w = site.create(name=f"w{i}", memory_mib=6000, wait_for_capacity_s=3600)
        assert w.state == WS.WORKSPACE_STATE_PENDING
    emptied: list[str] = []
    real = scheduler.emptied

    def counted(view: scheduler.NodeView) -> scheduler.NodeView:
        emptied.append(view.name)
        return real(view)

    monkeypatch.setattr(scheduler, "emptied", counted)
    queue.process(env)
    emptied.clear()
    queue.process(env)
    assert emptied == []  # nothing changed: nothing judged again
    assert {w.state for w in site.workspaces() if w.name.startswith("w")} == {"PENDING"}
    # The only node it fits goes: the next pass fails them all.
    site.core.operate(OWNER, "filler", Op.DESTROY)
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="big",
            workspaces=[
                nodes_pb2.ObservedWorkspace(
                    workspace_id=filler.id, state=nodes_pb2.OBSERVED_STATE_ABSENT
                )
            ],
        )
    )
    nodes.remove(env, "big")
    queue.process(env)
    assert {w.state for w in site.workspaces() if w.name.startswith("w")} == {"FAILED"}


def test_a_roster_pass_renders_a_clusters_files_again_only_when_its_roster_changed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's roster pass (every 5 s) rendered every running member's files, each
    holding the whole roster: quadratic in the cluster's size, 1.5 s of CPU per pass for
    one 500-member cluster, with nothing to push. Rendered now only when a roster
    changed; what is pushed is unchanged."""
    add_nodes(site, 2)
    env = site.core.env
    members = (MemberSpec("worker", "img", 1, 128, 4),)
    c = clusters.create(env, OWNER, ClusterRequest("ctx", members))
    with site.store.write() as s:  # running, contextualized (a NoCloud image)
        s.execute(
            update(Workspace)
            .where(Workspace.cluster == c.id)
            .values(state="RUNNING", context=seeds.NOCLOUD)
        )
    pushed: list[tuple[str, ExecTask]] = []
    pusher = RosterPusher(env, lambda _node, wid, task, _t: pushed.append((wid, task)))
    assert len(pusher.run_once()) == 4
    rendered: list[str] = []
    real = seed.roster_files

    def counted(roster: seed.Roster, hostname: str) -> list[tuple[str, str]]:
        rendered.append(hostname)
        return real(roster, hostname)

    monkeypatch.setattr(seed, "roster_files", counted)
    pushed.clear()
    assert pusher.run_once() == []
    assert rendered == [] and pushed == []
    # A member's host key becomes known: every member learns it.
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"
    with site.store.write() as s:
        s.execute(
            update(Workspace).where(Workspace.name == "ctx-worker-0").values(host_key_public=key)
        )
    assert len(pusher.run_once()) == 4
    known_hosts = [t.stdin.decode() for _w, t in pushed if "ssh_known_hosts" in " ".join(t.argv)]
    assert len(known_hosts) == 4 and all(key in k for k in known_hosts)


class UnderLock:
    """The store's write lock, counting the statements sent while it is held."""

    def __init__(self, site: Site, count: Statements) -> None:
        self.lock = site.store.write_lock
        self.count = count
        self.depth = 0
        count.sent = []

    def __enter__(self) -> bool:
        got = self.lock.__enter__()
        self.depth += 1
        self.count.active = True
        return got

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        self.count.active = self.depth > 0
        self.lock.__exit__(*exc)


def test_a_lease_pass_reads_the_workspaces_outside_the_write_lock(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease pass (every 30 s) looked for the workspaces to warn with a read of every
    live workspace (there is no index on the lease's end) inside a write transaction: the
    write lock held for the whole scan, every create waiting behind it. The scan is a
    read now; the write lock is taken for the workspaces to warn, read by id."""
    env = site.core.env
    with site.store.write() as s:
        s.add(Project(name="physics", default_lease_s=8 * HOUR, max_lease_s=72 * HOUR))
    ids = [
        create.create(
            env, ALICE, CreateRequest(CreateSpec(image="img", name=f"w{i}"), project="physics")
        ).id
        for i in range(3)
    ]
    count = Statements(site)
    monkeypatch.setattr(site.store, "write_lock", UnderLock(site, count))
    assert leases.check(env) == leases.Round()  # nothing ends within the warning
    assert Statements.reading("workspaces", count.sent) == []
    site.clock.now += 8 * HOUR - env.cfg.lease_warning_s / 2
    assert sorted(leases.check(env).warned) == sorted(ids)
    under = Statements.reading("workspaces", count.sent)
    assert under and all("workspaces.id IN" in s for s in under)
    assert leases.check(env) == leases.Round()  # warned once
