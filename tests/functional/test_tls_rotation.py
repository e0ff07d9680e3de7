"""Certificates re-issued while the daemons run: new connections use the new files.

A server bound by ``rpc.bind`` (the service's ``listen`` and ``node_listen``, an agent's
``peer_listen``) started with certificate A presents B to the next connection once B is
put in its identity directory, and an open stream on A goes on; files that cannot be
used (garbage, a certificate without its key) leave it on A. A CA rotation (a bundle
with the old and the new CA) is taken too. A channel of ``rpc.channel`` (a long-lived
``Client``, an agent's channels to the service and its peers) presents a re-issued
client certificate on the calls that follow, without dropping a stream under way.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from tests.functional.harness import WS, SitePki, TlsSite, wait_for
from workspace import config, rpc
from workspace.client import Client
from workspace.identity import Identity, Kind
from workspace.v1 import admin_pb2

SERVICE = Identity(Kind.SERVICE, "localhost")
FILES = ("ca.pem", "cert.pem", "key.pem")


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> SitePki:
    return SitePki(tmp_path_factory.mktemp("pki"))


def issue(p: SitePki, who: Identity, out: Path) -> Path:
    """A fresh identity directory for ``who`` (another serial each time)."""
    p.ca.issue(who, out, ("localhost",) if who.kind is Kind.SERVICE else ())
    return out


def put(src: Path, live: Path, names: tuple[str, ...] = FILES) -> None:
    """Put ``src``'s files in ``live`` as an admin would: each renamed into place."""
    live.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, live / f".{name}.new")
        os.replace(live / f".{name}.new", live / name)


def serial_of(pem_or_der: bytes) -> int:
    if pem_or_der.startswith(b"-----"):
        return x509.load_pem_x509_certificate(pem_or_der).serial_number
    return x509.load_der_x509_certificate(pem_or_der).serial_number


def cert_serial(identity_dir: Path) -> int:
    return serial_of((identity_dir / "cert.pem").read_bytes())


def served_serial(where: int | str, client: Path) -> int:
    """The serial of the certificate the server at ``where`` (a loopback port or a
    ``unix:`` address) shows a new connection (a plain TLS handshake, as ``openssl
    s_client`` does it, with a client identity)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(client / "cert.pem", client / "key.pem")
    ctx.set_alpn_protocols(["h2"])
    if isinstance(where, int):
        raw = socket.create_connection(("127.0.0.1", where), timeout=10)
    else:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.connect(str(rpc.unix_path(where)))
    with raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_of(der)


@dataclass
class Probe:
    """A TLS server with ``/t.Probe/Who`` (the serial of the caller's certificate) and
    ``/t.Probe/Follow`` (a stream of what is put in ``feed``)."""

    server: grpc.Server
    port: int
    feed: queue.Queue[bytes] = field(default_factory=queue.Queue)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, feed: queue.Queue[bytes]) -> None:
        self.feed = feed

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if method == "/t.Probe/Who":

            def who(request: bytes, context: grpc.ServicerContext) -> bytes:
                pem = rpc.peer_certificate(context)
                return str(serial_of(pem or b"")).encode()

            return grpc.unary_unary_rpc_method_handler(who)
        if method == "/t.Probe/Follow":

            def follow(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                while context.is_active():
                    try:
                        yield self.feed.get(timeout=0.2)
                    except queue.Empty:
                        continue

            return grpc.unary_stream_rpc_method_handler(follow)
        return None


@pytest.fixture
def probe_of() -> Iterator[list[Probe]]:
    started: list[Probe] = []
    yield started
    for p in started:
        p.server.stop(0)


def start_probe(started: list[Probe], identity_dir: Path) -> Probe:
    srv = rpc.server(4)
    feed: queue.Queue[bytes] = queue.Queue()
    srv.add_generic_rpc_handlers((_Handler(feed),))
    port = rpc.bind(srv, "127.0.0.1:0", config.TlsConfig(identity_dir=str(identity_dir)))
    srv.start()
    probe = Probe(srv, port, feed)
    started.append(probe)
    return probe


def who(ch: grpc.Channel) -> int:
    return int(ch.unary_unary("/t.Probe/Who")(b"", timeout=10))


def test_a_server_presents_a_reissued_certificate_to_new_connections(
    tmp_path: Path, site_pki: SitePki, probe_of: list[Probe], caplog: pytest.LogCaptureFixture
) -> None:
    a = issue(site_pki, SERVICE, tmp_path / "a")
    b = issue(site_pki, SERVICE, tmp_path / "b")
    live = tmp_path / "live"
    put(a, live)
    user = site_pki.user("alice")
    probe = start_probe(probe_of, live)
    assert served_serial(probe.port, user) == cert_serial(a)

    ch = rpc.channel(f"127.0.0.1:{probe.port}", site_pki.tls(user))
    try:
        stream = ch.unary_stream("/t.Probe/Follow")(b"", timeout=60)
        probe.feed.put(b"before")
        assert next(stream) == b"before"

        # Garbage in the certificate file: new connections still get A, and the log
        # names the file.
        (live / ".cert.pem.new").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n")
        os.replace(live / ".cert.pem.new", live / "cert.pem")
        with caplog.at_level(logging.WARNING, logger="workspace.tls"):
            assert served_serial(probe.port, user) == cert_serial(a)
            assert served_serial(probe.port, user) == cert_serial(a)
        said = [r.getMessage() for r in caplog.records if r.name == "workspace.tls"]
        assert len(said) == 1 and str(live / "cert.pem") in said[0]
        # B's certificate without its key yet (half a rotation): still A.
        put(b, live, ("cert.pem",))
        assert served_serial(probe.port, user) == cert_serial(a)

        put(b, live)  # the key too: B from the next connection on
        assert served_serial(probe.port, user) == cert_serial(b)
        # A gRPC client that checks the server's name gets through to B as well.
        fresh = rpc.channel(f"127.0.0.1:{probe.port}", site_pki.tls(site_pki.user("bob")))
        try:
            assert who(fresh) == cert_serial(site_pki.user("bob"))
        finally:
            fresh.close()

        # The stream opened on A goes on.
        probe.feed.put(b"after")
        assert next(stream) == b"after"
        stream.cancel()
    finally:
        ch.close()


def test_a_server_takes_a_ca_bundle_with_a_new_ca(
    tmp_path: Path, site_pki: SitePki, probe_of: list[Probe]
) -> None:
    """CA rotation: the server's bundle gets the new CA beside the old and its own
    certificate from the new CA; clients of either CA are served."""
    new_pki = SitePki(tmp_path / "new-pki")
    live = tmp_path / "live"
    put(issue(site_pki, SERVICE, tmp_path / "a"), live)
    probe = start_probe(probe_of, live)
    old_user = site_pki.user("alice")
    new_user = new_pki.user("alice")
    old_ch = rpc.channel(f"127.0.0.1:{probe.port}", site_pki.tls(old_user))
    try:
        stream = old_ch.unary_stream("/t.Probe/Follow")(b"", timeout=60)
        probe.feed.put(b"before")
        assert next(stream) == b"before"

        b = issue(new_pki, SERVICE, tmp_path / "b")
        bundle = (site_pki.ca.dir / "ca.pem").read_bytes() + (b / "ca.pem").read_bytes()
        (b / "ca.pem").write_bytes(bundle)
        put(b, live)
        # A client of the new CA trusts only it: served now.
        new_ch = rpc.channel(f"127.0.0.1:{probe.port}", new_pki.tls(new_user))
        try:
            assert who(new_ch) == cert_serial(new_user)
        finally:
            new_ch.close()
        probe.feed.put(b"after")
        assert next(stream) == b"after"
        stream.cancel()
    finally:
        old_ch.close()


def test_a_channel_presents_a_reissued_client_certificate(
    tmp_path: Path, site_pki: SitePki, probe_of: list[Probe]
) -> None:
    """A long-lived channel (a Client, an agent's): the calls after a rotation carry
    the new certificate; a stream under way is not dropped; garbage keeps the old one."""
    probe = start_probe(probe_of, site_pki.service())
    alice = Identity(Kind.USER, "alice")
    a = issue(site_pki, alice, tmp_path / "a")
    b = issue(site_pki, alice, tmp_path / "b")
    live = tmp_path / "live"
    put(a, live)
    ch = rpc.channel(f"127.0.0.1:{probe.port}", site_pki.tls(live))
    try:
        assert who(ch) == cert_serial(a)
        stream = ch.unary_stream("/t.Probe/Follow")(b"", timeout=60)
        probe.feed.put(b"before")
        assert next(stream) == b"before"

        (live / "key.pem").write_bytes(b"half a key")
        assert who(ch) == cert_serial(a)
        put(b, live)
        assert who(ch) == cert_serial(b)

        probe.feed.put(b"after")
        assert next(stream) == b"after"
        stream.cancel()
    finally:
        ch.close()


def test_a_channel_made_in_the_middle_of_a_rotation_waits_for_whole_files(
    tmp_path: Path, site_pki: SitePki, probe_of: list[Probe], caplog: pytest.LogCaptureFixture
) -> None:
    """An agent makes its channel to the service anew at each reconnect: over files half
    written at that moment it is still made (its calls fail, the agent tries again, as
    with any broken connection: its link thread goes on), the file named in a WARNING;
    once the files are whole its calls carry the new certificate."""
    probe = start_probe(probe_of, site_pki.service())
    b = issue(site_pki, Identity(Kind.USER, "alice"), tmp_path / "b")
    live = tmp_path / "live"
    put(b, live, ("ca.pem", "cert.pem"))
    (live / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nhalf")
    with caplog.at_level(logging.WARNING, logger="workspace.tls"):
        ch = rpc.channel(f"127.0.0.1:{probe.port}", site_pki.tls(live))
    try:
        assert any(str(live / "key.pem") in r.getMessage() for r in caplog.records)
        with pytest.raises(grpc.RpcError) as failed:
            who(ch)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        put(b, live, ("key.pem",))
        assert who(ch) == cert_serial(b)
    finally:
        ch.close()


def test_the_service_and_a_long_lived_client_rotate_without_a_restart(
    tmp_path: Path, site_pki: SitePki
) -> None:
    """The service's ``listen``: re-issued while it runs, a new connection is served
    with the new certificate. A long-lived Client whose identity is re-issued, the old
    certificate then revoked by serial (docs/security.md, "Rotation"), goes on working:
    its calls carry the new certificate."""
    live = tmp_path / "service-id"
    a = issue(site_pki, SERVICE, tmp_path / "a")
    put(a, live)
    site = TlsSite(tmp_path / "site", site_pki, tls=config.to_dict(site_pki.tls(live)))
    try:
        admin = Identity(Kind.USER, site.cfg.default_owner, admin=True)
        user_live = tmp_path / "admin-id"
        put(issue(site_pki, admin, tmp_path / "u-a"), user_live)
        old_serial = cert_serial(user_live)
        assert served_serial(site.address, user_live) == cert_serial(a)
        with Client(site.address, site_pki.tls(user_live), timeout_s=10) as client:
            client.list_workspaces()
            b = issue(site_pki, SERVICE, tmp_path / "b")
            put(b, live)
            assert served_serial(site.address, user_live) == cert_serial(b)

            put(issue(site_pki, admin, tmp_path / "u-b"), user_live)
            site_pki.ca.revoke(hex(old_serial))
            client.list_workspaces()
            client.list_workspaces()
    finally:
        site.close()


def test_a_node_rotates_without_restarting_its_agent(tmp_path: Path, site_pki: SitePki) -> None:
    """A node's certificate re-issued into its identity directory, the old one revoked
    by serial: the agent, not restarted, registers again with the new one (its
    workspace is found again), and its peer server presents the new one."""
    site = TlsSite(tmp_path / "site", site_pki, node_grace_s=600)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        node = Identity(Kind.NODE, "rot1")
        live = tmp_path / "node-id"
        put(issue(site_pki, node, tmp_path / "a"), live)
        old_serial = cert_serial(live)
        agent = site.add_agent(
            "rot1", tls=config.to_dict(site_pki.tls(live)), peer_listen="127.0.0.1:0"
        )
        w = site.stubs.create(name="kept")
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        assert agent.peer_server is not None
        peer_port = int(agent.peer_server.address.rsplit(":", 1)[1])
        assert served_serial(peer_port, site_pki.user("alice")) == old_serial

        # The order docs/security.md gives for a node: revoke the old one first (the
        # service binds a node to the certificate it registered with), then put the new
        # files in place.
        site_pki.ca.revoke(hex(old_serial))
        wait_for(lambda: state_of(site, "rot1") == admin_pb2.NODE_STATE_DOWN, what="rot1 DOWN")
        b = issue(site_pki, node, tmp_path / "b")
        put(b, live)
        assert served_serial(peer_port, site_pki.user("alice")) == cert_serial(b)
        wait_for(
            lambda: state_of(site, "rot1") == admin_pb2.NODE_STATE_READY,
            what="rot1 READY again, with its new certificate",
        )
        assert site.agents["rot1"] is agent
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    finally:
        site.close()


def state_of(site: TlsSite, node: str) -> int:
    nodes = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=5).nodes
    return next(n.state for n in nodes if n.name == node)
