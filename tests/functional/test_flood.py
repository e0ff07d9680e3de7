"""One caller cannot hurt the others: a flood of idle watches over real mutual TLS.

Alice opens 500 idle WatchWorkspaces streams. The per-identity stream cap refuses all but
``max_streams_per_caller`` of them at once; the node agent (on the Nodes API's own server)
keeps its heartbeats flowing for longer than ``node_grace_s`` and stays READY; Bob is
served: his own watch, an image import and a create all succeed within normal timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.agent import Agent
from agent.virt.fake import FakeDriver
from tests.functional.harness import Stubs, agent_config, service_config, wait_for
from workspace import pki, rpc
from workspace.config import TlsConfig
from workspace.identity import Identity, Kind
from workspace.service.main import Service
from workspace.v1 import admin_pb2, workspaces_pb2

FLOOD = 500
CAP = 8
GRACE_S = 2


@dataclass(frozen=True)
class Site:
    service: Service
    agent: Agent
    ids: dict[str, TlsConfig]


def _tls(d: Path) -> TlsConfig:
    return TlsConfig(
        ca_file=str(d / "ca.pem"), cert_file=str(d / "cert.pem"), key_file=str(d / "key.pem")
    )


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[Site]:
    ca = pki.init(tmp_path / "ca")
    people = {
        "service": (Identity(Kind.SERVICE, "localhost"), ["localhost"]),
        "root": (Identity(Kind.USER, "root", admin=True), []),
        "alice": (Identity(Kind.USER, "alice"), []),
        "bob": (Identity(Kind.USER, "bob"), []),
        "n1": (Identity(Kind.NODE, "n1"), []),
    }
    ids = {}
    for who, (identity, hosts) in people.items():
        ca.issue(identity, tmp_path / "id" / who, hosts)
        ids[who] = _tls(tmp_path / "id" / who)
    # TCP on loopback (any port): the service certificate names "localhost".
    cfg = service_config(
        tmp_path,
        listen="localhost:0",
        tls=ids["service"].__dict__,
        max_workers=32,
        max_streams_per_caller=CAP,
        heartbeat_interval_s=1,
        node_grace_s=GRACE_S,
    )
    svc = Service(cfg)
    svc.start()
    node_address = f"localhost:{svc.node_port}"
    acfg = agent_config(tmp_path, "n1", node_address, tls=ids["n1"].__dict__)
    agent = Agent(acfg, FakeDriver(acfg.fake, acfg.state_dir))
    agent.start()
    site = Site(svc, agent, ids)
    try:
        yield site
    finally:
        agent.stop()
        svc.stop(0)


def _stubs(site: Site, who: str) -> Stubs:
    return Stubs(rpc.channel(f"localhost:{site.service.port}", site.ids[who]))


def _node_state(root: Stubs) -> int:
    nodes = root.admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=5).nodes
    return next((n.state for n in nodes if n.name == "n1"), 0)


def test_500_idle_watches_from_one_user_starve_neither_nodes_nor_other_users(
    tls_site: Site,
) -> None:
    root, alice, bob = (_stubs(tls_site, w) for w in ("root", "alice", "bob"))
    wait_for(lambda: _node_state(root) == admin_pb2.NODE_STATE_READY, what="n1 READY")
    root.network()

    refused: list[grpc.RpcError] = []
    lock = threading.Lock()

    def on_done(call: grpc.Future) -> None:
        if call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            with lock:
                refused.append(call)  # type: ignore[arg-type]

    calls = []
    for _ in range(FLOOD):
        call = alice.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())
        call.add_done_callback(on_done)
        calls.append(call)
    try:
        wait_for(lambda: len(refused) == FLOOD - CAP, 60, "all but the capped streams refused")
        assert tls_site.service.stream_cap.counter.open_streams("user:alice") == CAP
        details = refused[0].details()
        assert "user:alice already has 8 streams open (max_streams_per_caller)" in details
        assert "WatchWorkspaces" in details

        # Heartbeats keep flowing for more than twice the grace period: n1 stays READY.
        until = time.monotonic() + 2.5 * GRACE_S
        while time.monotonic() < until:
            assert _node_state(root) == admin_pb2.NODE_STATE_READY
            time.sleep(0.25)

        # Bob is served: his own watch is accepted, his import and create succeed.
        watch = bob.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(), timeout=20)
        bob.import_image("bobimg")
        ws = bob.ws.CreateWorkspace(
            workspaces_pb2.CreateWorkspaceRequest(image="bobimg", name="b1"), timeout=10
        )
        first = next(watch)
        assert first.workspace.id == ws.id
        assert bob.get(ws.id).name == "b1"
        watch.cancel()
        # The still-open streams of alice are alice's only: a stream that ends frees its slot.
        calls[[c.done() for c in calls].index(False)].cancel()
        wait_for(
            lambda: tls_site.service.stream_cap.counter.open_streams("user:alice") == CAP - 1,
            what="a cancelled stream to free its slot",
        )
    finally:
        for c in calls:
            c.cancel()
        for s in (root, alice, bob):
            s.channel.close()


def test_calls_beyond_max_concurrent_rpcs_are_refused_at_once(tmp_path: Path) -> None:
    from tests.functional.harness import Site as PlainSite

    site = PlainSite(tmp_path, max_concurrent_rpcs=2)
    # An agent holds its assignment stream on the Nodes API's own server: not counted.
    site.add_agent("node1")
    watches = [
        site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest()) for _ in range(2)
    ]
    try:
        wait_for(
            lambda: (
                site.service is not None
                and site.service.stream_cap.counter.open_streams("user:local") == 2
            ),
            what="two watches open",
        )
        with pytest.raises(grpc.RpcError) as err:
            site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches.pop().cancel()
        wait_for(
            lambda: (
                site.service is not None
                and site.service.stream_cap.counter.open_streams("user:local") == 1
            ),
            what="a watch closed",
        )
        again = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(), timeout=10)
        assert list(again.workspaces) == []
    finally:
        for w in watches:
            w.cancel()
        site.close()
