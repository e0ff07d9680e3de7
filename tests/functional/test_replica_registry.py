"""Which replicas are alive on PostgreSQL (service/registry.py, docs/design/replicas.md):
each replica's row and the advisory lock its session holds for its life. A save whose
replica is killed (-9) is cleared within seconds by the survivor, not after
``limits.save_timeout_s``; a save waiting on the replica that holds the agent's stream
fails as soon as that replica is gone; a live replica's save is never cleared."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent import save as agent_save
from agent.agent import Agent
from agent.virt.fake import FakeDriver
from tests.functional.harness import (
    WS,
    Site,
    Stubs,
    agent_config,
    start_replicas,
    wait_for,
)
from workspace import errors, rpc
from workspace.client import Client
from workspace.ops import save as ops_save
from workspace.service.registry import GONE_S
from workspace.v1 import admin_pb2


class Held:
    """The node's copy of a disk held until ``go`` (the save stays under way)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.copying, self.go = threading.Event(), threading.Event()
        real = agent_save.qemu_img.flatten

        def held(src: Path, dst: Path, timeout_s: float, told: Any = None) -> None:
            real(src, dst, timeout_s, told)
            self.copying.set()
            self.go.wait(60)

        monkeypatch.setattr(agent_save.qemu_img, "flatten", held)


def save_in_thread(address: str, result: dict[str, Any]) -> threading.Thread:
    """`SaveImage` of ``box`` as ``box-saved:1`` through ``address``: the image or the error
    in ``result``."""

    def run() -> None:
        with Client(address) as c:
            try:
                result["image"] = c.save_image("box", "box-saved:1", timeout_s=120)
            except errors.WorkspaceError as exc:
                result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


def stopped_box(stubs: Stubs, subnet: str) -> str:
    """A stopped workspace ``box`` on node n1; its id."""
    stubs.network(subnet=subnet)
    stubs.import_image("img")
    w = stubs.create(name="box", request_id="r-box")
    stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING, 30)
    stubs.ws.StopWorkspace(stubs.ref(w.id))
    stubs.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED, 30)
    return str(w.id)


def save_failures(stubs: Stubs, workspace_id: str) -> list[str]:
    events = stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=False))
    return [
        e.reason
        for e in events
        if e.kind == "workspace.save_failed" and e.workspace_id == workspace_id
    ]


class Replicas:
    """Service processes (``a``, ``b``) on one PostgreSQL and one blob directory, and an
    in-process agent of node n1 on ``b``'s node address only."""

    def __init__(self, tmp: Path, pg_db: str) -> None:
        self.url = pg_db
        self.stubs: dict[str, Stubs] = {}
        self.agent: Agent | None = None
        replicas = start_replicas(tmp, pg_db, node_grace_s=60)
        self.procs = {name: r.proc for name, r in replicas.items()}
        self.socks = {name: r.listen for name, r in replicas.items()}
        for name, sock in self.socks.items():
            wait_for(lambda s=sock: Path(s[5:]).exists(), 60, f"replica {name}")
            self.stubs[name] = Stubs(rpc.channel(sock))
        cfg = agent_config(tmp, "n1", self.socks["b"].replace("svc.sock", "nodes.sock"))
        self.agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir))
        self.agent.start()
        wait_for(self.agent.link.connected, 30, "n1 on b")

    def replica_of(self, name: str) -> str:
        """How the registry names replica ``name`` (its row, found by its pid)."""
        pid = self.procs[name].popen.pid
        with psycopg.connect(self.url.replace("+psycopg", ""), autocommit=True) as conn:
            row = conn.execute(
                "SELECT replica_id, host FROM replicas WHERE pid = %s", (pid,)
            ).fetchone()
        assert row is not None, f"replica {name} is not in the registry"
        return f"{row[0]} (pid {pid} on {row[1]})"

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        for st in self.stubs.values():
            st.channel.close()
        for p in self.procs.values():
            p.terminate()


@pytest.fixture
def two(tmp_path: Path, pg_db: str) -> Iterator[Replicas]:
    r = Replicas(tmp_path, pg_db)
    try:
        yield r
    finally:
        r.close()


def test_the_save_of_a_replica_killed_9_is_cleared_by_the_other_within_seconds(
    two: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save arrives at A (which marks it) and runs on B (which holds n1's stream). A
    is killed -9 mid-save: B clears the mark within seconds, with a
    ``workspace.save_failed`` naming A, and the workspace starts again. While A lived,
    its save was left alone."""
    b = two.stubs["b"]
    wid = stopped_box(b, "192.168.61.0/24")
    held = Held(monkeypatch)
    result: dict[str, Any] = {}
    t = save_in_thread(two.socks["a"], result)
    try:
        assert held.copying.wait(60)
        assert b.get(wid).saving_as == "box-saved:1"
        a_named = two.replica_of("a")
        # Both replicas alive: several of their registry passes leave A's save alone.
        time.sleep(2 * GONE_S)
        assert b.get(wid).saving_as == "box-saved:1"
        two.procs["a"].kill9()
        wait_for(lambda: b.get(wid).saving_as == "", 30, "A's save cleared by B")
    finally:
        held.go.set()
        t.join(60)
    assert "image" not in result
    assert save_failures(b, wid) == [ops_save.lost_with(a_named)]
    b.ws.StartWorkspace(b.ref(wid))
    b.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, 30)


def test_a_save_whose_agent_replica_is_killed_9_fails_at_once(
    two: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save arrives at A and runs on B, which holds n1's stream; B is killed -9
    mid-save: A stops waiting for B's answer (not the save's whole time limit), the
    caller gets UNAVAILABLE saying so, and the mark is cleared."""
    a = two.stubs["a"]
    wid = stopped_box(a, "192.168.62.0/24")
    held = Held(monkeypatch)
    result: dict[str, Any] = {}
    t = save_in_thread(two.socks["a"], result)
    try:
        assert held.copying.wait(60)
        two.procs["b"].kill9()
        t.join(30)
        assert not t.is_alive(), "the save still waits for the replica that is gone"
    finally:
        held.go.set()
        t.join(60)
    err = result["error"]
    assert isinstance(err, errors.Unavailable)
    assert "is gone; try again" in err.message
    assert a.get(wid).saving_as == ""
    assert [r for r in save_failures(a, wid) if "is gone" in r]


@pytest.fixture
def sites(tmp_path: Path, pg_db: str) -> Iterator[list[Site]]:
    out: list[Site] = []
    try:
        for name in ("a", "b"):
            d = tmp_path / name
            d.mkdir()
            out.append(Site(d, database_url=pg_db, data_dir=str(tmp_path / "data")))
        yield out
    finally:
        for s in out:
            s.close()


def test_every_replica_sees_the_live_ones_with_their_addresses(sites: list[Site]) -> None:
    a, b = sites
    svc_a, svc_b = a.service, b.service
    assert svc_a is not None and svc_b is not None
    assert svc_a.registry is not None and svc_b.registry is not None
    reg_a = svc_a.registry
    p0 = reg_a.passes
    wait_for(lambda: reg_a.passes > p0, 10, "a registry pass")
    live = reg_a.live()
    assert [(v.replica_id, v.listen, v.node_listen) for v in live] == [
        (svc_a.env.replica_id, a.address, a.node_address),
        (svc_b.env.replica_id, b.address, b.node_address),
    ]
    # B stops: A no longer lists it, and takes it for gone.
    b_id = svc_b.env.replica_id
    b.stop_service()
    wait_for(lambda: [v.replica_id for v in reg_a.live()] == [svc_a.env.replica_id], 10, "B gone")
    wait_for(lambda: reg_a.gone(b_id), 20, "B taken for gone")
