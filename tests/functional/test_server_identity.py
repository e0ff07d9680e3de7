"""Clients check who they reach, not only that the site CA signed its certificate.

A rogue server holding a certificate of the site's own CA (a node's, a user's) on a
unix socket or on TCP loopback: a user's ``Client`` and an agent refuse to talk to it
(the handshake fails, its handler never runs, nothing is sent), while the real service
is reached as before. Peers: an agent fetches a blob from the node the service named,
and from no server holding another node's certificate or the service's.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.agent import Agent
from agent.cache import BlobCache, Source
from agent.peers import PeerChannels, PeerServer
from agent.virt.fake import FakeDriver
from tests.functional.harness import SitePki, TlsSite, agent_config
from workspace import config, grants, pki, rpc, rpc_status
from workspace.client import Client
from workspace.codec import node as codec
from workspace.domain.model import PeerGrants
from workspace.errors import Unavailable
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.slurm import cli as slurm_cli
from workspace.slurm.settings import Settings

SECRET = b"#cloud-config\npassword: the-secret-user-data\n"


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> SitePki:
    return SitePki(tmp_path_factory.mktemp("pki"))


@dataclass
class Rogue:
    """A gRPC server answering every method, with a certificate of the site CA; it
    records every call that reaches it (and what was sent)."""

    address: str
    server: grpc.Server
    calls: list[str] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)


class _Everything(grpc.GenericRpcHandler):
    def __init__(self, rogue: Callable[[], Rogue]) -> None:
        self.rogue = rogue

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        rogue = self.rogue()
        rogue.calls.append(details.method)  # type: ignore[attr-defined]

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            rogue.received.append(request)
            return b""

        return grpc.unary_unary_rpc_method_handler(unary)


def start_rogue(where: str, tmp: Path, identity_dir: Path, site_pki: SitePki) -> Rogue:
    """A rogue server on a unix socket (``where="unix"``) or on TCP loopback."""
    srv = rpc.server(4)
    holder: list[Rogue] = []
    srv.add_generic_rpc_handlers((_Everything(lambda: holder[0]),))
    listen = f"unix:{tmp / 'rogue.sock'}" if where == "unix" else "127.0.0.1:0"
    port = rpc.bind(srv, listen, site_pki.tls(identity_dir))
    srv.start()
    rogue = Rogue(listen if where == "unix" else f"127.0.0.1:{port}", srv)
    holder.append(rogue)
    return rogue


ROGUES = {
    "node": lambda p: p.node("n1"),
    "user": lambda p: p.user("mallory"),
}
# What the client says: a certificate of the CA without the service's name, or one
# that may not serve at all.
SAYS = {"node": "does not prove it is the server expected", "user": "may not serve"}


@pytest.mark.parametrize("where", ["unix", "tcp"])
@pytest.mark.parametrize("rogue_kind", ["node", "user"])
def test_a_client_refuses_a_server_that_is_not_the_service(
    tmp_path: Path, site_pki: SitePki, where: str, rogue_kind: str
) -> None:
    rogue = start_rogue(where, tmp_path, ROGUES[rogue_kind](site_pki), site_pki)
    try:
        with Client(rogue.address, identity=site_pki.user("alice"), timeout_s=5) as alice:
            with pytest.raises(Unavailable) as err:
                alice.create_workspace("img", name="w1", user_data=SECRET)
            with pytest.raises(Unavailable):
                alice.list_workspaces()
        assert SAYS[rogue_kind] in err.value.message
        assert "cannot reach the workspace service" in err.value.message
        assert rogue.calls == [] and rogue.received == []  # the handler never ran
    finally:
        rogue.server.stop(0)


def test_ws_slurm_refuses_a_server_that_is_not_the_service(
    tmp_path: Path, site_pki: SitePki
) -> None:
    """ws-slurm's batch user reaches the service through the same Client."""
    rogue = start_rogue("unix", tmp_path, site_pki.node("n1"), site_pki)
    try:
        settings = Settings(
            service=rogue.address, identity=str(site_pki.user("slurm")), timeout_s=5
        )
        service = slurm_cli.connect(settings)
        with service, pytest.raises(Unavailable, match="does not prove it is the server"):
            service.list_workspaces()
        assert rogue.calls == []
    finally:
        rogue.server.stop(0)


def test_grpc_checks_that_a_server_certificate_may_serve(
    tmp_path: Path, site_pki: SitePki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BoringSSL (in gRPC) refuses a server certificate without SERVER_AUTH even when it
    carries the service's name: so a user's certificate (CLIENT_AUTH only) never serves."""
    with monkeypatch.context() as m:
        m.setattr(pki, "extended_key_usage", lambda kind: [ExtendedKeyUsageOID.CLIENT_AUTH])
        client_only = tmp_path / "client-only-service"
        site_pki.ca.issue(Identity(Kind.SERVICE, "localhost"), client_only)
    rogue = start_rogue("unix", tmp_path, client_only, site_pki)
    try:
        alice = Client(rogue.address, identity=site_pki.user("alice"), timeout_s=5)
        with alice, pytest.raises(Unavailable) as err:
            alice.list_workspaces()
        assert "unsupported certificate purpose" in err.value.message
        assert rogue.calls == []
    finally:
        rogue.server.stop(0)


@pytest.mark.parametrize("where", ["unix", "tcp"])
@pytest.mark.parametrize("rogue_kind", ["node", "user"])
def test_an_agent_refuses_a_server_that_is_not_the_service(
    tmp_path: Path, site_pki: SitePki, where: str, rogue_kind: str
) -> None:
    rogue = start_rogue(where, tmp_path, ROGUES[rogue_kind](site_pki), site_pki)
    cfg = agent_config(
        tmp_path, "n2", rogue.address, tls=config.to_dict(site_pki.tls(site_pki.node("n2")))
    )
    agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir))
    agent.start()
    try:
        time.sleep(3)  # the link and the task stream try (and retry) meanwhile
        assert not agent.link.connected()
        assert rogue.calls == [] and rogue.received == []
    finally:
        agent.stop()
        rogue.server.stop(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("listen", ["unix", "tcp"])
def test_the_service_is_reached_on_unix_and_tcp(
    tmp_path: Path, site_pki: SitePki, listen: str
) -> None:
    """The real service (its certificate names no host it is dialled at on TCP, only
    `localhost`): a user and an agent reach it by any address, as before."""
    kw: dict[str, Any] = {}
    if listen == "tcp":
        kw = {"listen": f"127.0.0.1:{free_port()}", "node_listen": f"127.0.0.1:{free_port()}"}
    site = TlsSite(tmp_path, site_pki, **kw)
    try:
        address = site.address
        assert address.startswith("unix:" if listen == "unix" else "127.0.0.1:")
        site.stubs.network()
        site.stubs.import_image("img", context="nocloud")
        site.add_agent("node1")
        with Client(address, identity=site_pki.user("alice")) as alice:
            w = alice.create_workspace("img", name="a1", user_data=SECRET)
            assert w.name == "a1" and "a1" in [x.name for x in alice.list_workspaces()]
    finally:
        site.close()


# -- peers ----------------------------------------------------------------------------------

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def peer_cache(tmp_path: Path) -> BlobCache:
    cache = BlobCache(tmp_path / "peer-cache")
    cache.ensure(DIGEST, lambda _d, o: iter([DATA[o:]]))
    return cache


def serve_peer(
    cache: BlobCache, node: str, identity_dir: Path, listen: str, p: SitePki
) -> PeerServer:
    server = PeerServer(cache, node, listen, "", p.tls(identity_dir))
    server.start()
    return server


def _fetch(tmp: Path, channels: PeerChannels, address: str, node: str) -> list[str]:
    """Fetch DIGEST from the peer ``node`` at ``address`` (then the service, which
    records it was asked); returns what was asked of the service."""
    asked: list[str] = []
    lock = threading.Lock()

    def service(digest: str, offset: int) -> Iterator[bytes]:
        with lock:
            asked.append(digest)
        yield DATA[offset:]

    cache = BlobCache(tmp)
    sources = [channels.source(address, node), Source("service", service)]
    assert cache.ensure(DIGEST, sources, len(DATA)).read_bytes() == DATA
    return asked


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_a_node_fetches_from_the_peer_the_service_named(
    tmp_path: Path, site_pki: SitePki, peer_cache: BlobCache, where: str
) -> None:
    listen = f"unix:{tmp_path / 'p1.sock'}" if where == "unix" else "127.0.0.1:0"
    p1 = serve_peer(peer_cache, "p1", site_pki.node("p1"), listen, site_pki)
    channels = PeerChannels("p2", site_pki.tls(site_pki.node("p2")))
    channels.take(site_pki.grants("p2", [DIGEST]))  # as the service's orders grant it
    try:
        assert _fetch(tmp_path / "c", channels, p1.address, "p1") == []  # not the service
        assert p1.servicer.served_bytes == len(DATA)
    finally:
        channels.close()
        p1.stop()


@pytest.mark.parametrize("holder", ["another node", "the service"])
@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_a_node_refuses_a_peer_that_is_not_the_node_named(
    tmp_path: Path, site_pki: SitePki, peer_cache: BlobCache, holder: str, where: str
) -> None:
    """A server at the address the service named for p1, holding p3's certificate (or
    the service's), serving the very blob: the fetch goes to the service instead."""
    cert = site_pki.node("p3") if holder == "another node" else site_pki.service()
    listen = f"unix:{tmp_path / 'p1.sock'}" if where == "unix" else "127.0.0.1:0"
    rogue = serve_peer(peer_cache, "p1", cert, listen, site_pki)
    channels = PeerChannels("p2", site_pki.tls(site_pki.node("p2")))
    try:
        assert _fetch(tmp_path / "c", channels, rogue.address, "p1") == [DIGEST]
        assert rogue.servicer.served_bytes == 0
    finally:
        channels.close()
        rogue.stop()


def test_with_tls_a_peer_source_without_its_node_is_not_used(
    tmp_path: Path, site_pki: SitePki, peer_cache: BlobCache
) -> None:
    """From a service that names no node for a source (older than the agent)."""
    p1 = serve_peer(peer_cache, "p1", site_pki.node("p1"), f"unix:{tmp_path / 'p1.sock'}", site_pki)
    channels = PeerChannels("p2", site_pki.tls(site_pki.node("p2")))
    try:
        assert _fetch(tmp_path / "c", channels, p1.address, "") == [DIGEST]
        assert p1.servicer.served_bytes == 0
    finally:
        channels.close()
        p1.stop()


def test_a_peer_refused_by_name_is_said_so_in_the_agents_log_line(
    tmp_path: Path, site_pki: SitePki, peer_cache: BlobCache
) -> None:
    """What gRPC reports (UNAVAILABLE) and the hint the agent logs with it."""
    listen = f"unix:{tmp_path / 'p.sock'}"
    rogue = serve_peer(peer_cache, "p1", site_pki.node("p3"), listen, site_pki)
    ch = rpc.channel(rogue.address, site_pki.tls(site_pki.node("p2")), node="p1")
    try:
        req = nodes_pb2.FetchBlobRequest(node="p2", digest=DIGEST)
        with pytest.raises(grpc.RpcError) as err:
            list(nodes_pb2_grpc.PeersStub(ch).FetchBlob(req, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        said = rpc_status.describe(err.value)
        assert "does not prove it is the server expected" in said
        assert "N.node.workspace.invalid" in said
        assert rogue.servicer.served_bytes == 0
    finally:
        ch.close()
        rogue.stop()


OTHER = "sha256:" + "0" * 64


def _expired() -> float:
    return time.time() - grants.LIFETIME_S - 60


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("no grant", "node p2 shows no grant from the service for"),
        ("another node's grant", "does not grant it"),
        ("a grant of another blob", "does not grant it"),
        ("an expired grant", "expired at"),
    ],
)
def test_a_peer_serves_a_node_only_the_blobs_the_service_granted_it(
    tmp_path: Path, site_pki: SitePki, peer_cache: BlobCache, case: str, said: str
) -> None:
    """p2 knows the digest p1 holds, but the service did not grant it to p2 (or the grant
    p2 shows is not for it, or has expired): p1 refuses with PERMISSION_DENIED, and p2's
    cache gets the blob from the next source, the service (which checks for itself)."""
    shown = {
        "no grant": None,
        "another node's grant": site_pki.grants("p3", [DIGEST]),
        "a grant of another blob": relabelled(site_pki.grants("p2", [OTHER]), DIGEST),
        "an expired grant": site_pki.grants("p2", [DIGEST], _expired),
    }[case]
    p1 = serve_peer(peer_cache, "p1", site_pki.node("p1"), f"unix:{tmp_path / 'p1.sock'}", site_pki)
    p2_tls = site_pki.tls(site_pki.node("p2"))
    channels = PeerChannels("p2", p2_tls)
    ch = rpc.channel(p1.address, p2_tls, node="p1")
    try:
        channels.take(shown)  # p2 shows p3's grant as its own, or ...
        assert _fetch(tmp_path / "c", channels, p1.address, "p1") == [DIGEST]
        assert p1.servicer.served_bytes == 0
        grant = channels.grant(DIGEST)
        req = nodes_pb2.FetchBlobRequest(
            node="p2", digest=DIGEST, grant=codec.grant_to_proto(grant)
        )
        with pytest.raises(grpc.RpcError) as err:
            list(nodes_pb2_grpc.PeersStub(ch).FetchBlob(req, timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert said in (err.value.details() or "")
    finally:
        ch.close()
        channels.close()
        p1.stop()


def relabelled(g: PeerGrants, digest: str) -> PeerGrants:
    """``g`` with its (one) signature shown as the grant of ``digest``."""
    return replace(g, signatures=tuple((digest, sig) for _, sig in g.signatures))
