"""Several service replicas on one PostgreSQL (docs/design/replicas.md): in-process
services sharing one database (and one data directory, for the blobs): exactly-once
placement under concurrent creates through three replicas, a watch on one replica seeing
a create made on another, and the leader lock moving when its holder dies or is cut off
from the database."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from agent.agent import Agent
from agent.virt.fake import FakeDriver
from tests.functional.harness import WS, Site, agent_config, answering_late, wait_for
from workspace import errors
from workspace.cli import ws
from workspace.client import Client
from workspace.service.replicas import LEADER_LOCK, Relay, conninfo
from workspace.store.engines import LOCK_CLASS
from workspace.v1 import admin_pb2, trust_pb2, workspaces_pb2


@pytest.fixture
def replicas(tmp_path: Path, pg_db: str) -> Iterator[list[Site]]:
    shared = tmp_path / "data"
    sites: list[Site] = []
    try:
        for name in ("a", "b", "c"):
            d = tmp_path / name
            d.mkdir()
            sites.append(Site(d, database_url=pg_db, data_dir=str(shared)))
        yield sites
    finally:
        for s in sites:
            s.close()


def agent_on(site: Site, node: str, service: str) -> Agent:
    """A fake agent dialing ``service`` (an address list), stopped with ``site``."""
    cfg = agent_config(site.tmp, node, service)
    agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir))
    agent.start()
    site.agents[node] = agent
    wait_for(lambda: agent.link.connected(), 30, f"{node} connected")
    return agent


def leaders(sites: list[Site]) -> list[int]:
    return [i for i, s in enumerate(sites) if s.service is not None and s.service.leader.acting()]


def test_concurrent_creates_through_three_replicas_are_placed_once(replicas: list[Site]) -> None:
    a = replicas[0]
    a.stubs.network(subnet="192.168.50.0/24")
    a.stubs.import_image("img")
    for n in ("n1", "n2"):
        a.add_agent(n, cpus=8, memory_mib=8 * 1024)
    acked: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def creator(site: Site, k: int) -> None:
        for i in range(8):
            rid = f"r-{k}-{i}"
            try:
                w = site.stubs.create(request_id=rid, cpus=1, memory_mib=1024)
            except Exception as exc:  # capacity refusals are expected past 16
                if "RESOURCE_EXHAUSTED" not in str(exc) and "capacity" not in str(exc):
                    errors.append(exc)
                continue
            with lock:
                acked[rid] = w.id
            # the same request through another replica returns the same workspace
            again = replicas[(k + 1) % 3].stubs.create(request_id=rid, cpus=1, memory_mib=1024)
            assert again.id == w.id

    threads = [threading.Thread(target=creator, args=(replicas[k % 3], k)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    views = {w.id: w for w in a.stubs.ws.ListWorkspaces(_list()).workspaces}
    assert set(acked.values()) <= set(views)
    ips = [w.nics[0].ip for w in views.values()]
    assert len(ips) == len(set(ips)), "an address was handed out twice"
    per_node: dict[str, int] = {}
    for w in views.values():
        per_node[w.node] = per_node.get(w.node, 0) + w.memory_mib
    assert all(m <= 8 * 1024 for m in per_node.values()), per_node
    assert 8 <= len(acked) <= 16  # at most the capacity of two 8-cpu, 8 GiB nodes


def _list() -> workspaces_pb2.ListWorkspacesRequest:
    return workspaces_pb2.ListWorkspacesRequest(page_size=1000)


def test_a_watch_on_one_replica_sees_a_create_on_another(replicas: list[Site]) -> None:
    a, b = replicas[0], replicas[1]
    a.stubs.network(subnet="192.168.51.0/24")
    a.stubs.import_image("img")
    a.add_agent("n1")
    seen: list[str] = []
    stream = a.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for ev in stream:
                seen.append(ev.workspace.name)

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.3)
    w = b.stubs.create(name="from-b", request_id=str(uuid.uuid4()))
    wait_for(lambda: "from-b" in seen, 30, "the watch on A to see B's create")
    # and the agent, whose stream is on A, runs it
    a.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    stream.cancel()


def test_the_leader_moves_when_it_dies_or_loses_its_session(
    replicas: list[Site], pg_db: str
) -> None:
    first = wait_for(lambda: leaders(replicas), 30, "a leader")
    assert len(first) == 1
    old = first[0]
    replicas[old].stop_service()  # dies: its session ends
    second = wait_for(lambda: leaders(replicas), 30, "another leader")
    assert len(second) == 1 and second[0] != old
    # Cut the leader off: terminate its lock session from another connection.
    now = second[0]
    svc = replicas[now].service
    assert svc is not None
    with psycopg.connect(conninfo(svc.store.engine), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND classid = %s AND objid = %s AND granted",
            (LOCK_CLASS, LEADER_LOCK),
        )
    wait_for(lambda: not svc.leader.acting(), 30, "the cut-off leader to stop acting")
    third = wait_for(lambda: leaders(replicas), 30, "a leader again")
    assert len(third) == 1


def box_on_a(a: Site, subnet: str) -> None:
    """A running workspace ``box`` on node n1, whose agent's task stream is on A."""
    a.stubs.network(subnet=subnet)
    a.stubs.import_image("img")
    a.add_agent("n1")
    a.stubs.create(name="box", request_id="r-box")
    a.stubs.wait_state("box", WS.WORKSPACE_STATE_RUNNING)
    svc_a = a.service
    assert svc_a is not None
    wait_for(lambda: svc_a.hub.connected("n1"), 30, "n1's task stream on A")


def test_exec_through_another_replica_reaches_the_agent(replicas: list[Site]) -> None:
    a, b = replicas[0], replicas[1]
    box_on_a(a, "192.168.52.0/24")
    with Client(b.address) as c:
        r = c.exec("box", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
        big = c.exec("box", ["cat"], stdin=b"x" * 5000)  # an answer in several parts
        assert big.stdout == b"x" * 5000
        assert c.exec("box", ["no-such-command"]).exit_code == 127


def test_an_exec_whose_holder_answers_late_still_reaches_the_agent(replicas: list[Site]) -> None:
    """A loaded replica holding the agent's stream acknowledged a forwarded exec after
    the 2 s the replica it arrived at waited: the user was told "node n1's agent is not
    connected" while it was. Here A's notification thread is held 3 s on every offer (as
    a busy machine held it); B waits for A, which is alive and has not said no."""
    a, b = replicas[0], replicas[1]
    box_on_a(a, "192.168.61.0/24")
    answering_late(a, "exec")
    with Client(b.address) as c:
        assert c.exec("box", ["echo", "late"]).stdout == b"late\n"
    # A node no replica holds: every replica says so, and that is the answer
    a.stop_agent("n1")
    wait_for(lambda: a.service is not None and not a.service.hub.connected("n1"), 30, "n1 gone")
    with Client(b.address) as c, pytest.raises(errors.Unavailable, match="not connected"):
        c.exec("box", ["true"])


def test_a_replica_the_others_see_starting_answers_their_offers(
    replicas: list[Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    """C restarts and its relay is 5 s late to listen (a loaded machine). As soon as A
    sees C in the registry, an exec through A for a node no replica holds is "not
    connected": C listens before it registers. Until session 44 it registered first, and
    A's offer, made before C listened, waited 10 s for C's answer and named C as silent."""
    a, c = replicas[0], replicas[2]
    box_on_a(a, "192.168.63.0/24")
    a.stop_agent("n1")
    svc_a, svc_c = a.service, c.service
    assert svc_a is not None and svc_a.registry is not None and svc_c is not None
    wait_for(lambda: not svc_a.hub.connected("n1"), 30, "n1 gone")
    registry = svc_a.registry
    c_id = svc_c.env.replica_id
    c.stop_service()
    wait_for(
        lambda: c_id not in [v.replica_id for v in registry.live()], 30, "C out of A's picture"
    )
    listen = Relay._listen_loop

    def late(relay: Relay) -> None:
        time.sleep(5)
        listen(relay)

    monkeypatch.setattr(Relay, "_listen_loop", late)
    starting = threading.Thread(target=c.start_service)
    starting.start()
    try:
        wait_for(lambda: len(registry.live()) == 3, 60, "C in A's picture")
        with Client(a.address) as client, pytest.raises(errors.Unavailable) as failed:
            client.exec("box", ["true"])
        assert "node n1's agent is not connected" in str(failed.value)
    finally:
        starting.join()


def test_a_save_through_another_replica_is_done_by_the_agent_on_its_own(
    replicas: list[Site],
) -> None:
    """The save arrives at B; n1's task stream is on A, which runs it: the agent sends
    its disk to A (the blob directory is shared), B imports the image."""
    a, b = replicas[0], replicas[1]
    box_on_a(a, "192.168.55.0/24")
    with Client(b.address) as c:
        c.stop_workspace("box")
        b.stubs.wait_state("box", WS.WORKSPACE_STATE_STOPPED)
        img = c.save_image("box", "img-saved:1")
        (root,) = img.partitions
        assert (root.name, root.format) == ("root", "qcow2")
        assert c.get_image("img-saved:1").partitions[0].digest == root.digest
        w = c.create_workspace("img-saved:1", name="again")
    a.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)


def test_a_client_with_an_address_list_fails_over(
    replicas: list[Site], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas[0], replicas[1]
    a.stubs.network(subnet="192.168.53.0/24")
    a.stubs.import_image("img")
    b.add_agent("n1")
    with Client(f"{a.address},{b.address}") as c:
        w = c.create_workspace("img", name="one", request_id="r-one")
        a.stop_service()  # the first address dies
        assert c.get_workspace(w.id).name == "one"  # served by B
        again = c.create_workspace("img", name="one", request_id="r-one")
        assert again.id == w.id  # idempotent across replicas
        assert c.create_workspace("img", name="two").name == "two"
    # ws --service A,B with A gone
    assert ws.main(["--service", f"{a.address},{b.address}", "list"]) == 0
    out = capsys.readouterr().out
    assert "one" in out and "two" in out


def test_an_agent_with_an_address_list_reconnects_without_going_down(
    replicas: list[Site],
) -> None:
    a, b = replicas[0], replicas[1]
    a.stubs.network(subnet="192.168.54.0/24")
    a.stubs.import_image("img")
    agent_on(a, "n1", f"{a.node_address},{b.node_address}")
    a.stubs.create(name="box", request_id="r-box")
    a.stubs.wait_state("box", WS.WORKSPACE_STATE_RUNNING)
    a.stop_service()
    svc_b = b.service
    assert svc_b is not None
    wait_for(lambda: svc_b.hub.connected("n1"), 30, "n1's task stream on B")
    w = b.stubs.create(name="after", request_id="r-after")
    b.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING, 15)  # orders through B
    nodes = b.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    assert [n.state for n in nodes] == [admin_pb2.NODE_STATE_READY]


def test_a_listener_cut_off_reconnects_and_misses_nothing(replicas: list[Site]) -> None:
    a, b = replicas[0], replicas[1]
    a.stubs.network(subnet="192.168.55.0/24")
    a.stubs.import_image("img")
    a.add_agent("n1")
    svc_a = a.service
    assert svc_a is not None and svc_a.relay is not None
    relay = svc_a.relay
    wait_for(relay.listening.is_set, 30, "A listening")
    seen: list[str] = []
    stream = a.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for ev in stream:
                seen.append(ev.workspace.name)

    threading.Thread(target=follow, daemon=True).start()
    with psycopg.connect(relay.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'workspace-service listen' AND pid <> pg_backend_pid()"
        )
        # made while (some) listeners are away: the re-check or the reconnect finds it
        b.stubs.create(name="while-away", request_id=str(uuid.uuid4()))
    wait_for(lambda: "while-away" in seen, 15, "the watch on A to see it anyway")
    wait_for(relay.listening.is_set, 30, "A listening again")
    b.stubs.create(name="after", request_id=str(uuid.uuid4()))
    wait_for(lambda: "after" in seen, 30, "the watch on A to see the next one")
    stream.cancel()


def test_a_message_after_the_notify_connection_broke_still_reaches_the_others(
    replicas: list[Site],
) -> None:
    """The replicas' connections for NOTIFY went stale while idle (the server restarted,
    or ended them): the first messages sent after that still arrive. An exec through B
    for the agent on A is forwarded by NOTIFY (B's task, A's answer), which no re-check
    makes up for: it failed with UNAVAILABLE ("not connected")."""
    a, b = replicas[0], replicas[1]
    box_on_a(a, "192.168.59.0/24")
    svc_a, svc_b = a.service, b.service
    assert svc_a is not None and svc_a.relay is not None and svc_b is not None
    with Client(b.address) as c:
        assert c.exec("box", ["echo", "one"]).stdout == b"one\n"  # both senders connected
        with psycopg.connect(svc_a.relay.dsn, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'workspace-service notify'"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        assert len(ended) >= 2  # A's and B's senders, idle now
        assert c.exec("box", ["echo", "two"]).stdout == b"two\n"


def test_a_replica_cut_off_from_the_database_lets_its_task_streams_go(
    replicas: list[Site],
) -> None:
    """A loses the database (here: only its LISTEN connection, which it cannot open
    again) while its agent's task stream stays up; B cannot forward an exec to A, which
    hears nothing. A ends the task streams it holds, the agent opens its stream on B, and
    an exec through B reaches the guest again."""
    a, b = replicas[0], replicas[1]
    a.stubs.network(subnet="192.168.56.0/24")
    a.stubs.import_image("img")
    agent_on(a, "n1", f"{a.node_address},{b.node_address}")
    a.stubs.create(name="box", request_id="r-box")
    a.stubs.wait_state("box", WS.WORKSPACE_STATE_RUNNING)
    svc_a, svc_b = a.service, b.service
    assert svc_a is not None and svc_a.relay is not None and svc_b is not None
    wait_for(lambda: svc_a.hub.connected("n1"), 30, "n1's task stream on A")
    relay = svc_a.relay
    dsn, relay.dsn = relay.dsn, relay.dsn + "&dbname=no_such_database"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'workspace-service listen' AND pid <> pg_backend_pid()"
        )
    wait_for(lambda: not relay.listening.is_set(), 30, "A deaf")

    def exec_through_b() -> bool:
        try:
            with Client(b.address) as c:
                return c.exec("box", ["echo", "hi"]).stdout == b"hi\n"
        except errors.Unavailable:
            return False

    wait_for(exec_through_b, 40, "an exec through B to reach the agent")
    assert svc_b.hub.connected("n1") and not svc_a.hub.connected("n1")


def test_a_lost_notification_of_a_policy_change_is_found_by_the_recheck(
    replicas: list[Site],
) -> None:
    """B commits a trust policy change and its NOTIFY never goes out (B died in between,
    say): the change touches no workspace, yet A's periodic re-check finds it (the
    policy's version, the nodes' order generations) and the agent on A gets it."""
    a, b = replicas[0], replicas[1]
    a.stubs.network(subnet="192.168.57.0/24")
    agent = a.add_agent("n1")
    svc_a, svc_b = a.service, b.service
    assert svc_a is not None and svc_a.relay is not None and svc_b is not None
    wait_for(svc_a.relay.listening.is_set, 30, "A listening")
    svc_b.notifier.set_relay(None)  # B's changes are not sent to the others any more
    before = agent.gate.version
    b.stubs.trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE))
    wait_for(lambda: agent.gate.version > before, 15, "the agent on A to get the policy")
    # A network added through B: every node's orders change (their NICs' bounds).
    before_gen = svc_a.notifier.generation("n1")
    b.stubs.network(name="second", subnet="192.168.58.0/24")
    wait_for(lambda: svc_a.notifier.generation("n1") > before_gen, 15, "n1's stream on A woken")


def test_a_watch_on_another_replica_hears_a_queued_workspace_move_up(
    replicas: list[Site],
) -> None:
    """The leader's queue pass says a waiting workspace's new place; a watch on another
    replica is sent it as read there, with its place too (`ws create --wait` through that
    replica prints "1st in the queue" when it is)."""
    [lead] = wait_for(lambda: leaders(replicas), 30, "a leader")
    a, other = replicas[lead], replicas[(lead + 1) % 3]
    a.stubs.network(subnet="192.168.52.0/24")
    a.stubs.import_image("img")
    a.add_agent("n1", cpus=4, memory_mib=4096)
    a.stubs.create(name="x", memory_mib=3500)
    ahead = a.stubs.create(name="ahead", memory_mib=2000, wait_for_capacity_s=600)
    b = a.stubs.create(name="b", memory_mib=2000, wait_for_capacity_s=600)
    reasons: list[str] = []
    stream = other.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(id=b.id))

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for ev in stream:
                reasons.append(ev.workspace.reason)

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: reasons, 30, "the watch's first event")
    assert reasons[0].startswith("waiting for capacity (2nd in the queue): "), reasons
    a.stubs.ws.DestroyWorkspace(a.stubs.ref(ahead.id))
    first = "waiting for capacity (1st in the queue): "
    wait_for(lambda: any(r.startswith(first) for r in reasons), 30, f"{first!r} among the reasons")
    stream.cancel()
