"""Plaintext only when said and only on loopback (rpc.check_listen), at the start of
the service and the agent; TLS material from identity directories; the peer server's
rule (node identities, not revoked); the local site's identities; how clients pick
their identity."""

from __future__ import annotations

import datetime
import json
import logging
import shutil
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2_grpc

from agent import main as agent_main
from agent.peers import PeerGate
from workspace import client, config, errors, pki, rpc, rpc_status, tls_probe
from workspace.config import AgentConfig, ServiceConfig, TlsConfig
from workspace.errors import ConfigError, PermissionDenied
from workspace.identity import Identity, Kind
from workspace.service import main as service_main
from workspace.site import identities
from workspace.site.record import SiteRecord, write_record

CLIENT_AUTH, SERVER_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> pki.CA:
    return pki.init(tmp_path_factory.mktemp("ca") / "ca")


def issue(ca: pki.CA, tmp: Path, who: Identity) -> Path:
    out = tmp / f"{who.kind.value}-{who.name}"
    ca.issue(who, out)
    return out


@pytest.mark.parametrize(
    "address", ["unix:/tmp/x.sock", "127.0.0.1:7070", "localhost:7070", "[::1]:7070", "127.8.9.1:1"]
)
def test_insecure_is_allowed_on_loopback_and_unix_sockets(address: str) -> None:
    assert rpc.check_listen(address, TlsConfig(), insecure=True) is True


@pytest.mark.parametrize("address", ["0.0.0.0:7070", "10.1.2.3:7070", "[::]:7070", "head:7070"])
def test_insecure_off_loopback_is_allowed_and_said_at_error(address: str) -> None:
    """As the issue of identities asks: an explicit insecure = true says otherwise, and
    the log says so loudly (anyone reaching the address is the admin)."""
    assert rpc.check_listen(address, TlsConfig(), insecure=True) is True
    level, line = rpc.insecure_warning("workspace-service", address)
    assert level == logging.ERROR and "ANYONE WHO CAN REACH IT ACTS AS THE SITE ADMIN" in line
    assert rpc.insecure_warning("workspace-service", "127.0.0.1:7070")[0] == logging.WARNING


@pytest.mark.parametrize("address", ["unix:/tmp/x.sock", "127.0.0.1:7070", "0.0.0.0:7070"])
def test_plaintext_without_insecure_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match=r"no TLS configured.*insecure = true"):
        rpc.check_listen(address, None, insecure=False)


def test_tls_from_an_identity_dir(ca: pki.CA, tmp_path: Path) -> None:
    d = issue(ca, tmp_path, Identity(Kind.SERVICE, "head"))
    files = rpc.tls_files(TlsConfig(identity_dir=str(d)))
    assert (files.ca_file.name, files.cert_file.name, files.key_file.name) == (
        "ca.pem",
        "cert.pem",
        "key.pem",
    )
    assert rpc.check_listen("0.0.0.0:7070", TlsConfig(identity_dir=str(d)), False) is False


def test_tls_material_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key\.pem not found.*ws-admin pki issue"):
        rpc.check_listen("0.0.0.0:1", TlsConfig(identity_dir=str(tmp_path)), False)
    d = tmp_path / "id"
    pki.init(tmp_path / "ca2").issue(Identity(Kind.SERVICE, "head"), d)
    with pytest.raises(ConfigError, match=r"crl_file /nope/crl\.pem not found"):
        rpc.check_listen(
            "0.0.0.0:1", TlsConfig(identity_dir=str(d), crl_file="/nope/crl.pem"), False
        )
    with pytest.raises(ConfigError, match="key_file not set"):
        rpc.tls_files(TlsConfig(ca_file="a", cert_file="b"))


def test_service_refuses_to_start_in_plaintext(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    config.write(cfg, ServiceConfig(listen="0.0.0.0:0", data_dir=str(tmp_path / "d")))
    assert service_main.main(["--config", str(cfg)]) == 1


def test_service_warns_loudly_when_insecure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ServiceConfig(listen=f"unix:{tmp_path}/s.sock", data_dir=str(tmp_path), insecure=True)
    svc = service_main.Service(cfg)
    with caplog.at_level(logging.WARNING):
        svc.start()
    svc.stop(0)
    assert any("INSECURE" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_agent_refuses_plaintext(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="no TLS configured"):
        agent_main.check_transport(AgentConfig(service="unix:/x.sock"))
    with caplog.at_level(logging.WARNING):
        agent_main.check_transport(AgentConfig(service="127.0.0.1:7070", insecure=True))
    assert [r.levelno for r in caplog.records if "INSECURE" in r.message] == [logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        agent_main.check_transport(
            AgentConfig(service="head:7070", peer_listen="0.0.0.0:7071", insecure=True)
        )
    loud = [r for r in caplog.records if "ANYONE WHO CAN REACH IT" in r.message]
    assert [r.levelno for r in loud] == [logging.ERROR] * 2


def test_peer_gate_serves_only_unrevoked_nodes(ca: pki.CA, tmp_path: Path) -> None:
    me = issue(ca, tmp_path, Identity(Kind.NODE, "n1"))
    gate = PeerGate(TlsConfig(identity_dir=str(me), crl_file=str(ca.dir / pki.CRL)))

    def pem(who: Identity) -> bytes:
        return (issue(ca, tmp_path, who) / pki.CERT).read_bytes()

    assert gate.check(pem(Identity(Kind.NODE, "n2"))) == ("n2", "")
    assert "only to node identities" in gate.check(pem(Identity(Kind.USER, "bob", True)))[1]
    assert "only to node identities" in gate.check(pem(Identity(Kind.SERVICE, "head")))[1]
    assert gate.check(None)[1]
    n3 = pem(Identity(Kind.NODE, "n3"))
    assert gate.check(n3)[1] == ""
    ca.revoke("n3")
    assert "revoked" in gate.check(n3)[1]
    # without TLS there is nobody to check (plaintext is only allowed with insecure)
    assert PeerGate(TlsConfig()).secure is False


def test_site_identities_are_made_once_and_renewed_when_revoked(tmp_path: Path) -> None:
    first = identities.ensure(tmp_path, "local", ["n1", "n2"])
    who = pki.identity_of_dir(first.admin)
    assert (who.kind, who.name, who.admin) == (Kind.USER, "local", True)
    assert pki.identity_of_dir(first.service).name == "localhost"
    assert sorted(first.nodes) == ["n1", "n2"]
    again = identities.ensure(tmp_path, "local", ["n1", "n2"])
    assert pki.identity_of_dir(again.admin).serial == who.serial  # kept
    assert (first.admin / pki.KEY).stat().st_mode & 0o777 == 0o600
    pki.CA(first.ca_dir).revoke("local")
    renewed = identities.ensure(tmp_path, "local", ["n1", "n2"])
    assert pki.identity_of_dir(renewed.admin).serial != who.serial


def test_a_site_identity_issued_anew_revokes_the_one_it_replaces(tmp_path: Path) -> None:
    """The service binds a node to the certificate it registered with: the one `site up`
    replaces (here: in its last month) is revoked, so the new one may take the name
    over. A daemon that runs keeps its identity (revoked under it, it would be cut off)."""
    first = identities.ensure(tmp_path, "local", ["n1", "n2"])
    ca = pki.CA(first.ca_dir)
    for name in ("n1", "n2"):
        shutil.rmtree(first.nodes[name])
        ca.issue(Identity(Kind.NODE, name), first.nodes[name], days=10)
    before = {n: pki.identity_of_dir(first.nodes[n]).serial for n in ("n1", "n2")}
    again = identities.ensure(tmp_path, "local", ["n1", "n2"], nodes_running={"n2"})
    rows = {r.serial: r for r in ca.issued()}
    n1 = pki.identity_of_dir(again.nodes["n1"]).serial
    assert n1 != before["n1"] and rows[before["n1"]].revoked and not rows[n1].revoked
    crl = pki.Revocations(str(first.crl_file), str(ca.dir / pki.CA_CERT))
    assert crl.is_revoked(before["n1"])
    assert crl.superseded() == {before["n1"]}  # replaced, not distrusted: n1 is not lost
    # The CA's index keeps the fields `ws-admin` of the release before reads (it took
    # each row's keys as its fields: a key more, and its `site up` failed on this CA).
    index = json.loads((ca.dir / pki.INDEX).read_text())
    assert {tuple(sorted(row)) for row in index} == {
        ("kind", "name", "not_after", "revoked", "serial")
    }
    assert pki.identity_of_dir(again.nodes["n2"]).serial == before["n2"]  # its agent runs
    assert not rows[before["n2"]].revoked
    service = pki.identity_of_dir(again.service).serial
    assert identities.ensure(tmp_path, "local", ["n1", "n2"], service_runs=True).service
    assert pki.identity_of_dir(again.service).serial == service


def test_site_identities_issued_before_the_server_names_are_issued_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `site up` issued before: every identity named `localhost`, none the name
    that proves what it is, every one both client and server. The next `site up`
    issues each anew (and keeps the new ones after)."""
    ids = tmp_path / "identities"
    ids.mkdir()
    ca = pki.init(identities.ca_dir(tmp_path))
    old = {
        "service": Identity(Kind.SERVICE, "localhost"),
        "admin-local": Identity(Kind.USER, "local", admin=True),
        "node-n1": Identity(Kind.NODE, "n1"),
    }
    with monkeypatch.context() as m:
        m.setattr(pki, "tls_name", lambda kind, name="": "")
        m.setattr(pki, "hosts_problem", lambda who, hosts: "")
        m.setattr(pki, "extended_key_usage", lambda kind: [CLIENT_AUTH, SERVER_AUTH])
        serials = {d: ca.issue(who, ids / d, ["localhost"]).serial for d, who in old.items()}
    new = identities.ensure(tmp_path, "local", ["n1"])
    for d, path in (
        ("service", new.service),
        ("admin-local", new.admin),
        ("node-n1", new.nodes["n1"]),
    ):
        assert path == ids / d
        assert pki.identity_of_dir(path).serial != serials[d], d
    cert = x509.load_pem_x509_certificate((new.admin / pki.CERT).read_bytes())
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        CLIENT_AUTH
    ]
    again = identities.ensure(tmp_path, "local", ["n1"])
    assert pki.identity_of_dir(again.service).serial == pki.identity_of_dir(new.service).serial
    assert (
        pki.identity_of_dir(again.nodes["n1"]).serial == pki.identity_of_dir(new.nodes["n1"]).serial
    )


def test_the_site_service_still_answers_agents_and_clients_of_the_release_before(
    tmp_path: Path,
) -> None:
    """Releases before the server names checked the local site's unix sockets for the
    name `localhost`. Upgraded first (README, "Upgrading a site with running VMs"), the
    service was issued a certificate without it: its agents, still running, were
    refused in the handshake (UNAVAILABLE) until each was restarted, their nodes DOWN and
    their VMs LOST meanwhile, and users' older `ws` could not reach the site. It now
    answers them; today's clients check it by its own name as before."""
    ids = identities.ensure(tmp_path, "local", ["n1"])
    srv = rpc.server(max_workers=2)
    address = f"unix:{tmp_path}/service.sock"
    rpc.bind(srv, address, ids.tls(ids.service))
    srv.start()

    def call(ch: grpc.Channel) -> grpc.StatusCode:
        try:
            ch.unary_unary("/workspace.v1.Nothing/Here")(b"", timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def old_channel(identity_dir: Path) -> grpc.Channel:  # as rpc.channel was before
        files = rpc.tls_files(TlsConfig(identity_dir=str(identity_dir)))
        creds = grpc.ssl_channel_credentials(
            files.ca_file.read_bytes(), files.key_file.read_bytes(), files.cert_file.read_bytes()
        )
        return grpc.secure_channel(
            address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )

    try:
        for who in (ids.nodes["n1"], ids.admin):  # an old agent, an old `ws`
            with old_channel(who) as ch:
                assert call(ch) is grpc.StatusCode.UNIMPLEMENTED  # TLS passed
        with rpc.channel(address, ids.tls(ids.admin)) as ch:
            assert call(ch) is grpc.StatusCode.UNIMPLEMENTED
        again = identities.ensure(tmp_path, "local", ["n1"])  # kept, not issued anew
        assert pki.identity_of_dir(again.service).serial == pki.identity_of_dir(ids.service).serial
    finally:
        srv.stop(0)


def test_client_picks_its_identity(
    ca: pki.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WS_IDENTITY", *client.TLS_ENV):
        monkeypatch.delenv(name, raising=False)
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("WS_SITE_DIR", str(site))
    alice = issue(ca, tmp_path, Identity(Kind.USER, "alice"))
    admin = issue(ca, tmp_path, Identity(Kind.USER, "local", True))
    addr = f"unix:{site}/service.sock"
    assert client.resolve_tls(addr) is None  # no site, nothing given: plaintext
    write_record(site, SiteRecord(str(site), addr, "fake", identity_dir=str(admin)))
    tls = client.resolve_tls(addr)
    assert tls is not None and tls.identity_dir == str(admin)  # the site's admin
    assert client.resolve_tls("other:7070") is None  # not for another service
    monkeypatch.setenv("WS_IDENTITY", str(alice))
    tls = client.resolve_tls(addr)
    assert tls is not None and tls.identity_dir == str(alice)  # $WS_IDENTITY first
    tls = client.resolve_tls(addr, str(admin))
    assert tls is not None and tls.identity_dir == str(admin)  # the flag before that
    with pytest.raises(ConfigError, match="not found"):
        client.resolve_tls(addr, str(tmp_path / "nope"))


def test_the_services_identity_is_refused_as_a_callers_at_once(ca: pki.CA, tmp_path: Path) -> None:
    """`ws --identity DIR` (or Client(identity=DIR)) with the service's own identity
    directory: a clear error before any connection (the service would only close it,
    which looks like an outage); a node's (client and server) is taken."""
    service = issue(ca, tmp_path, Identity(Kind.SERVICE, "head.example"))
    with pytest.raises(ConfigError) as exc:
        client.resolve_tls("svc:7070", str(service))
    assert exc.value.message == (
        f"identity directory {service} holds the service's own certificate "
        "(service:head.example), for a server only (extended key usage serverAuth): it "
        "cannot call the service; use a user's identity (`ws-admin pki issue user NAME "
        "[--admin] --out DIR`)"
    )
    with pytest.raises(ConfigError, match="for a server only"):
        client.Client("svc:7070", identity=service)
    node = issue(ca, tmp_path, Identity(Kind.NODE, "n1"))
    assert client.identity_tls(node).identity_dir == str(node)


def test_tls_env_is_all_three_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """$WS_TLS_CA set alone was refused as "tls: cert_file, key_file not set (give
    identity_dir, ...)": config-file words for no file the caller had written."""
    for name in ("WS_IDENTITY", *client.TLS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert client.tls_from_env() is None
    monkeypatch.setenv("WS_TLS_CA", "/etc/ws/ca.pem")
    with pytest.raises(ConfigError) as exc:
        client.resolve_tls("svc:7070")
    assert exc.value.message.startswith(
        "WS_TLS_CA is set but WS_TLS_CERT, WS_TLS_KEY are not: set all of WS_TLS_CA, "
        "WS_TLS_CERT, WS_TLS_KEY"
    )
    monkeypatch.setenv("WS_TLS_CERT", "/etc/ws/cert.pem")
    monkeypatch.setenv("WS_TLS_KEY", "/etc/ws/key.pem")
    tls = client.tls_from_env()
    assert tls is not None
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        "/etc/ws/ca.pem",
        "/etc/ws/cert.pem",
        "/etc/ws/key.pem",
    )


def test_site_configs_use_the_site_identities(tmp_path: Path) -> None:
    from workspace.site import local
    from workspace.site.configs import write_configs

    site = local.LocalSite(tmp_path / "s", driver="fake", nodes=2)
    site.dir.mkdir()
    specs = site.node_specs()
    ids = identities.ensure(site.dir, "local", [s.name for s in specs])
    write_configs(site.dir, site.address, specs, "fake", "qemu", {}, ids)
    svc = config.load(ServiceConfig, site.service_config)
    assert not svc.insecure and svc.tls.identity_dir == str(ids.service)
    assert svc.tls.crl_file == str(site.dir / "pki" / "crl.pem")
    for spec in specs:
        agent = config.load(AgentConfig, spec.config)
        assert not agent.insecure and agent.tls.identity_dir == str(ids.nodes[spec.name])
        assert pki.identity_of_dir(agent.tls.identity_dir).name == spec.name
        # several nodes: each serves peers on a socket in its own directory
        assert agent.peer_listen == f"unix:{spec.dir}/peers.sock"
    one = local.LocalSite(tmp_path / "one", driver="fake")
    one.dir.mkdir()
    write_configs(one.dir, one.address, one.node_specs(), "fake", "qemu", {})
    agent = config.load(AgentConfig, one.agent_config)
    assert agent.insecure and agent.peer_listen == ""  # no identities given: plaintext


def test_site_up_talks_to_its_service_as_its_admin_from_the_first_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libvirt site writes its record before the namespaces exist; that record (and
    the start's own client) must already name the admin identity — else restarting
    only an agent of a running site talks plaintext to its mTLS service."""
    from workspace.site import local
    from workspace.site.record import read_record

    seen: dict[str, object] = {}

    class Env:
        libvirt_uri = "qemu+unix:///system?socket=/tmp/x"

        def up(self) -> None:
            rec = read_record(tmp_path)
            seen["record"] = rec.identity_dir if rec is not None else None

        def down(self) -> None: ...

        def run_prefix(self) -> list[str]:
            return []

        def running(self) -> bool:
            return False

    class Proc:
        pid = 0

        def poll(self) -> None:
            return None

    site = local.LocalSite(tmp_path, driver="libvirt")
    monkeypatch.setattr(site, "_hostenv", lambda *a: Env())
    monkeypatch.setattr(site, "_spawn", lambda *a: Proc())
    monkeypatch.setattr(site, "_wait_healthy", lambda *a: seen.update(tls=site.client_tls()))
    for name in ("_ensure_network", "_wait_node_ready"):
        monkeypatch.setattr(site, name, lambda *a: None)
    rec = site.up().record
    admin = str(tmp_path / "identities" / "admin-local")
    assert rec.identity_dir == admin and seen["record"] == admin
    assert seen["tls"] == TlsConfig(identity_dir=admin)


def test_channels_expect_the_service_or_the_named_node() -> None:
    assert rpc.expected_name() == "service.workspace.invalid"
    assert rpc.expected_name("n1") == "n1.node.workspace.invalid"
    with pytest.raises(PermissionDenied):
        rpc.expected_name("N1/../x")  # never a name a certificate could carry


@pytest.mark.parametrize(
    ("details", "says"),
    [
        ("... Custom verification check failed with error: UNAUTHENTICATED: Hostname "
         "Verification Check failed.", "does not prove it is the server expected"),
        ("... CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose", "may not serve"),
        ("... CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate",
         "not of a CA this side trusts"),
        ("Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
         "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
         "certificate: OK", "`ws-admin pki bundle` makes a ca.pem of both"),
        ("failed to connect to all addresses; Connection refused", ""),
    ],
)  # fmt: skip
def test_a_refused_server_identity_is_explained(details: str, says: str) -> None:
    hint = rpc_status.server_identity_hint(details)
    assert (says in hint) if says else hint == ""


def test_a_client_certificate_the_server_refuses_is_told_from_an_outage(
    ca: pki.CA, tmp_path: Path
) -> None:
    """tls_probe: the server closes the handshake after a certificate of another CA
    (gRPC says only "Socket closed"); a certificate it takes, or no server, says nothing."""
    srv = rpc.server(2)
    service = issue(ca, tmp_path, Identity(Kind.SERVICE, "localhost"))
    unix = f"unix:{tmp_path}/s.sock"
    rpc.listen_on(srv, unix, TlsConfig(identity_dir=str(service)), "listen")
    port = rpc.listen_on(srv, "127.0.0.1:0", TlsConfig(identity_dir=str(service)), "listen")
    srv.start()
    try:
        own = TlsConfig(identity_dir=str(issue(ca, tmp_path, Identity(Kind.USER, "bob"))))
        stranger = issue(pki.init(tmp_path / "other"), tmp_path / "o", Identity(Kind.USER, "bob"))
        shutil.copy(ca.dir / pki.CA_CERT, stranger / "ca.pem")  # trusts the server
        foreign = TlsConfig(identity_dir=str(stranger))
        for address in (unix, f"127.0.0.1:{port}"):
            assert tls_probe.refused_certificate(address, own) == ""
            said = tls_probe.refused_certificate(address, foreign)
            assert said.startswith(" (the service closed the connection in the TLS handshake")
            assert "issued by another CA named" in said or "its ca.pem holds" in said
            # The service's own identity, used to call: of the site's CA, but a server's
            # only. Not taken for another CA's.
            said = tls_probe.refused_certificate(address, TlsConfig(identity_dir=str(service)))
            assert said.startswith(" (the service closed the connection in the TLS handshake")
            assert "it is the service's own certificate (service:localhost), for a server" in said
            assert "a caller needs a user's identity (`ws-admin pki issue user" in said
            assert "CA" not in said
    finally:
        srv.stop(0).wait()  # stop() only begins it: until it ends, the socket may still answer
    assert tls_probe.refused_certificate(unix, foreign) == ""  # nobody there


def test_an_expired_certificate_the_server_refuses_is_said_to_have_expired(
    ca: pki.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tls_probe: a certificate of the site's CA that expired (a node's, after its year)
    is closed in the handshake as a stranger's is: said to have expired, not to be of a
    CA the service does not trust (another site's, a CA made anew), which sent the
    agent's admin after the wrong fix."""
    srv = rpc.server(2)
    service = issue(ca, tmp_path, Identity(Kind.SERVICE, "localhost"))
    unix = f"unix:{tmp_path}/s.sock"
    rpc.listen_on(srv, unix, TlsConfig(identity_dir=str(service)), "listen")
    srv.start()
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=pki.CERT_DAYS + 30)
    with monkeypatch.context() as m:
        m.setattr(pki, "_now", lambda: long_ago)
        old = TlsConfig(identity_dir=str(issue(ca, tmp_path, Identity(Kind.NODE, "n1"))))
    try:
        said = tls_probe.refused_certificate(unix, old)
    finally:
        srv.stop(0)
    assert said.startswith(" (the service closed the connection in the TLS handshake")
    assert (
        f", which expired on {long_ago + datetime.timedelta(days=pki.CERT_DAYS):%Y-%m-%d}" in said
    )
    assert "does not trust" not in said and "made anew" not in said


def test_a_refused_certificate_is_said_when_the_first_replica_is_down(
    ca: pki.CA, tmp_path: Path
) -> None:
    """ws with the replicas' list, the first one down and the next closing the handshake
    on a certificate of another CA: the probe asked the first one, which does not
    answer, and the refusal went unsaid; it asks the one that closed the connection."""
    srv = rpc.server(2)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    service = issue(ca, tmp_path, Identity(Kind.SERVICE, "localhost"))
    live = f"unix:{tmp_path}/s.sock"
    rpc.listen_on(srv, live, TlsConfig(identity_dir=str(service)), "listen")
    srv.start()
    stranger = issue(pki.init(tmp_path / "other"), tmp_path / "o", Identity(Kind.USER, "bob"))
    shutil.copy(ca.dir / pki.CA_CERT, stranger / "ca.pem")  # trusts the server
    try:
        with (
            client.Client(
                f"unix:{tmp_path}/down.sock,{live}", TlsConfig(identity_dir=str(stranger))
            ) as c,
            pytest.raises(client.ServiceUnreachable) as refused,
        ):
            c.health()
    finally:
        srv.stop(0)
    assert "any of the 2 addresses" in refused.value.message
    assert "the service closed the connection in the TLS handshake" in refused.value.message


def test_a_call_on_a_closed_tls_client_is_client_closed(ca: pki.CA, tmp_path: Path) -> None:
    """A Client with an identity (every real site, the local one too) goes through the
    reloading TLS channel, whose refusal after close was a bare ValueError, not the
    ClientClosed (a WorkspaceError) the README promises; the insecure channel's was."""
    alice = issue(ca, tmp_path, Identity(Kind.USER, "alice"))
    c = client.Client(f"unix:{tmp_path / 'none.sock'}", identity=str(alice))
    c.close()
    calls = {
        "get_workspace": lambda: c.get_workspace("x"),
        "list_workspaces": lambda: c.list_workspaces(),
        "watch": lambda: next(c.watch()),
    }
    for name, call in calls.items():
        with pytest.raises(errors.ClientClosed, match=rf"^{name}: the client is closed"):
            call()
