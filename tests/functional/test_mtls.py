"""Mutual TLS on every hop, through the real service and fake-driver agents:
a site over mTLS (service, agents, peers), refusals of callers without a certificate
or with one of another CA, the peer server's node-only rule, and how `ws` picks the
identity it calls with (--identity, $WS_IDENTITY)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.agent import Agent
from agent.virt.fake import FakeDriver
from tests.functional.harness import WS, SitePki, Stubs, TlsSite, agent_config, wait_for
from tests.functional.test_cli import ok, run
from workspace import config, pki, rpc
from workspace.cli import ws
from workspace.client import Client
from workspace.codec import node as codec
from workspace.config import AgentConfig, ServiceConfig, TlsConfig
from workspace.domain.model import PeerGrants
from workspace.errors import ConfigError, Unavailable
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.site import record as site_record
from workspace.slurm import cli as slurm_cli
from workspace.slurm.settings import Settings
from workspace.v1 import admin_pb2, images_pb2

KIB = 1024


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> SitePki:
    """One CA for the module; identities are issued on demand."""
    return SitePki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_site(tmp_path: Path, site_pki: SitePki) -> Iterator[TlsSite]:
    s = TlsSite(tmp_path, site_pki)
    try:
        yield s
    finally:
        s.close()


def list_nodes(stubs: Stubs) -> list[str]:
    return [n.name for n in stubs.admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=5).nodes]


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value.code()  # type: ignore[no-any-return]


def test_a_site_over_mutual_tls_runs_a_workspace(tls_site: TlsSite) -> None:
    site = tls_site
    assert site.cfg.tls.enabled and not site.cfg.insecure
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1")  # registers with its node certificate and streams its orders
    w = site.stubs.create(name="w1")
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    assert list_nodes(site.identity("ops", admin=True)) == ["node1"]
    assert code_of(lambda: list_nodes(site.identity("alice"))) == grpc.StatusCode.PERMISSION_DENIED
    # the Python client, as a user identity directory
    with Client(site.address, identity=site.pki.user("alice")) as alice:
        mine = alice.create_workspace("img", name="a1")
        assert "a1" in [w.name for w in alice.list_workspaces()]
        running = WS.WORKSPACE_STATE_RUNNING
        wait_for(lambda: alice.get_workspace(mine.id).state == running, what="a1 RUNNING")


NEEDS_ONE = "(no identity given: a service with mutual TLS needs "


def test_a_client_without_a_certificate_cannot_connect(
    tls_site: TlsSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Stubs(rpc.channel(tls_site.address))
    try:
        assert code_of(lambda: list_nodes(plain)) == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.channel.close()
    # The client says what is likely missing, in the words of the way it was made
    # (Client() reads no $WS_IDENTITY: from_env does); where nothing listens it does not.
    with Client(tls_site.address) as c, pytest.raises(Unavailable) as err:
        c.list_workspaces()
    assert f"{NEEDS_ONE}Client(address, identity=DIR), or Client.from_env() with " in str(err.value)
    for name in ("WS_IDENTITY", "WS_TLS_CA", "WS_TLS_CERT", "WS_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WS_SITE_DIR", str(tmp_path / "no-site"))
    with Client.from_env(tls_site.address) as c, pytest.raises(Unavailable) as err:
        c.list_workspaces()
    assert f"{NEEDS_ONE}--identity DIR or $WS_IDENTITY)" in str(err.value)
    # ws-slurm (run by slurmctld) names its identity in its config file.
    slurm = slurm_cli.connect(Settings(service=tls_site.address))
    with slurm as c, pytest.raises(Unavailable) as err:
        c.list_workspaces()
    assert f'{NEEDS_ONE}identity = "DIR" in the ws-slurm config (or $WS_IDENTITY))' in str(
        err.value
    )
    nowhere = f"unix:{tmp_path / 'absent.sock'}"
    with Client(nowhere) as c, pytest.raises(Unavailable) as err:
        c.list_workspaces()
    assert "No such file or directory" in str(err.value)
    assert "no identity given" not in str(err.value)
    # Of a list, one with nothing there does not hide that another may want an identity.
    with Client(f"{nowhere},{tls_site.address}") as c, pytest.raises(Unavailable) as err:
        c.list_workspaces()
    assert f"{NEEDS_ONE}Client(address, identity=DIR)" in str(err.value)
    assert f"\n  {nowhere}: " in str(err.value) and f"\n  {tls_site.address}: " in str(err.value)


def test_a_certificate_of_another_ca_is_refused(tls_site: TlsSite, tmp_path: Path) -> None:
    other = SitePki(tmp_path / "other")
    stranger = rpc.tls_files(other.tls(other.user("local", admin=True)))
    # The client trusts the site's CA (so only the service can refuse) but presents an
    # admin certificate of another CA: the handshake fails.
    tls = TlsConfig(
        ca_file=str(tls_site.pki.ca.dir / pki.CA_CERT),
        cert_file=str(stranger.cert_file),
        key_file=str(stranger.key_file),
    )
    foreign = Stubs(rpc.channel(tls_site.address, tls))
    try:
        assert code_of(lambda: list_nodes(foreign)) == grpc.StatusCode.UNAVAILABLE
    finally:
        foreign.channel.close()
    assert list_nodes(tls_site.stubs) == []  # the site's own admin still gets in


def _peer_fetch(
    address: str, tls: TlsConfig, digest: str, node: str, grant: PeerGrants | None = None
) -> bytes:
    """FetchBlob from the peer server of ``node`` at ``address``, as ``tls`` (showing the
    grant of ``digest`` in ``grant``)."""
    ch = rpc.channel(address, tls, node=node)
    try:
        stub = nodes_pb2_grpc.PeersStub(ch)
        shown = codec.grant_to_proto(grant.grant(digest) if grant else None)
        req = nodes_pb2.FetchBlobRequest(node="x", digest=digest, grant=shown)
        return b"".join(m.data for m in stub.FetchBlob(req, timeout=10))
    finally:
        ch.close()


def test_peers_fetch_over_mtls_and_serve_only_unrevoked_nodes(
    tls_site: TlsSite, tmp_path: Path
) -> None:
    site = tls_site
    site.stubs.network()
    site.stubs.import_image("img", bytes([9]) * 2 * 1024 * KIB)
    digest = str(
        site.stubs.images.GetImage(images_pb2.GetImageRequest(name="img")).partitions[0].digest
    )
    for node in ("p1", "p2"):
        site.add_agent(
            node, labels={"node": node}, peer_listen=f"unix:{tmp_path / (node + '-peers.sock')}"
        )
    w1 = site.stubs.create(name="w1", requirements={"node": "p1"})
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    # p2 gets the blob from p1 over mutual TLS, not from the service
    assert site.service is not None
    copy = site.service.catalog.blobs.path(digest)
    os.rename(copy, copy.with_name("hidden"))
    try:
        w2 = site.stubs.create(name="w2", requirements={"node": "p2"})
        site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING)
    finally:
        os.rename(copy.with_name("hidden"), copy)
    assert site.agents["p2"].cache.received_bytes == {"peer": 2 * 1024 * KIB}

    p1 = site.agents["p1"].peer_address
    node_tls = site.pki.tls(site.pki.node("p3"))
    # a node the service did not grant the blob: refused, though it knows the digest
    with pytest.raises(grpc.RpcError) as err:
        _peer_fetch(p1, node_tls, digest, "p1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node p3 shows no grant from the service" in (err.value.details() or "")
    p3_grant = site.pki.grants("p3", [digest])
    assert _peer_fetch(p1, node_tls, digest, "p1", p3_grant) == bytes([9]) * 2 * 1024 * KIB
    # a user (even an admin) is no node: refused
    admin_tls = site.pki.tls(site.pki.user("local", admin=True))
    with pytest.raises(grpc.RpcError) as err:
        _peer_fetch(p1, admin_tls, digest, "p1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only to node identities" in (err.value.details() or "")
    # no certificate: the handshake fails
    with pytest.raises(grpc.RpcError) as err:
        _peer_fetch(p1, TlsConfig(), digest, "p1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # a revoked node: refused at its next call, without restarting p1
    site.revoke("p3")
    with pytest.raises(grpc.RpcError) as err:
        _peer_fetch(p1, node_tls, digest, "p1", p3_grant)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in (err.value.details() or "")


def _ws(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = ws.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_ws_identity_flag_and_env_pick_the_identity(
    tls_site: TlsSite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site = tls_site
    monkeypatch.setenv("WS_SITE_DIR", str(tmp_path / "no-site"))
    for name in ("WS_SERVICE", "WS_IDENTITY", "WS_TLS_CA", "WS_TLS_CERT", "WS_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    good = str(site.pki.user("alice"))
    foreign = str(SitePki(tmp_path / "other").user("alice"))
    svc = ["--service", site.address]

    code, text = _ws([*svc, "list"], capsys)  # no identity at all
    assert code == 3 and "--identity" in text
    assert _ws([*svc, "--identity", good, "list"], capsys)[0] == 0
    monkeypatch.setenv("WS_IDENTITY", good)
    assert _ws([*svc, "list"], capsys)[0] == 0
    monkeypatch.setenv("WS_IDENTITY", foreign)
    assert _ws([*svc, "list"], capsys)[0] == 3  # the env names a stranger
    assert _ws([*svc, "--identity", good, "list"], capsys)[0] == 0  # the flag wins
    code, text = _ws([*svc, "--identity", str(tmp_path / "nope"), "list"], capsys)
    assert code == 1 and "identity directory" in text and "not found" in text


def test_an_expired_certificate_is_said_not_taken_for_an_outage(
    tls_site: TlsSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service's TLS layer only closes the connection ("Socket closed", exit 3, as if
    the service were down): ws reads the identity's dates first and says what is wrong."""
    old = tmp_path / "old-alice"
    tls_site.pki.ca.issue(Identity(Kind.USER, "alice"), old, days=0)  # expires at once
    code, text = _ws(["--service", tls_site.address, "--identity", str(old), "list"], capsys)
    assert code == 1
    assert f"the certificate of identity {old} expired on " in text
    assert "ask the site's admin for a new identity" in text and "cannot reach" not in text
    with pytest.raises(ConfigError, match="expired on"):
        Client(tls_site.address, identity=old)


def test_an_identity_whose_files_do_not_match_is_said_not_taken_for_an_outage(
    tls_site: TlsSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rotation half done (the new cert.pem moved in, not its key.pem): ws logged a
    TLS warning, then said it "cannot reach the workspace service" (exit 3; for a local
    site, that it does not answer and to start it). It says which file is wrong now."""
    new, old = tls_site.pki.user("alice"), tmp_path / "old-alice"
    tls_site.pki.ca.issue(Identity(Kind.USER, "alice"), old)
    (old / "cert.pem").write_bytes((new / "cert.pem").read_bytes())
    code, text = _ws(["--service", tls_site.address, "--identity", str(old), "list"], capsys)
    assert code == 1
    assert f"identity directory {old} cannot be used: {old}/key.pem: not the key" in text
    assert "cannot reach" not in text
    with pytest.raises(ConfigError, match="not the key of the certificate"):
        Client(tls_site.address, identity=old)


def test_the_local_site_runs_mtls_and_works_without_flags(tmp_path: Path) -> None:
    """`ws-admin site up --driver fake`: its own CA and identities, every hop over mTLS,
    and `ws` finds the admin identity through the site record; other users get theirs
    with `ws-admin pki issue` from the site's CA without flags."""
    d = tmp_path / "site"
    ok(d, "admin", "site", "up", "--driver", "fake")
    try:
        svc = config.load(ServiceConfig, d / "service.toml")
        agent = config.load(AgentConfig, d / "agent.toml")
        assert not svc.insecure and not agent.insecure
        assert svc.tls.identity_dir and svc.tls.crl_file == str(d / "pki" / "crl.pem")
        assert pki.identity_of_dir(agent.tls.identity_dir).principal == "node:local"
        assert ok(d, "ws", "list").code == 0  # no --service, no --identity
        st = ok(d, "admin", "site", "status", "-o", "json").json()
        assert st["identity"]["principal"] == "user:local (admin)"  # type: ignore[index]
        assert "identity user:local (admin)" in ok(d, "admin", "site", "status").out

        alice = tmp_path / "alice"
        ok(d, "admin", "pki", "issue", "user", "alice", "--out", str(alice))
        assert ok(d, "ws", "--identity", str(alice), "list").code == 0
        plain = Stubs(rpc.channel(f"unix:{d}/service.sock"))
        try:
            assert code_of(lambda: list_nodes(plain)) == grpc.StatusCode.UNAVAILABLE
        finally:
            plain.channel.close()
    finally:
        r = run(d, "admin", "site", "down", "--purge")
    assert r.code == 0 and "pki" in r.out and "identities" in r.out
    assert not (d / "pki").exists()


def test_an_identity_of_another_ca_is_said_not_taken_for_an_outage(
    tls_site: TlsSite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An identity issued by another CA (another site's, or the local site's before
    `site down --purge` made a new CA) could not check the service's certificate, and `ws`
    said the local site "does not answer" and to start it, while it ran. It now says the
    server's certificate is of no CA the identity trusts."""
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "site"))
    monkeypatch.delenv("WS_SERVICE", raising=False)
    (tmp_path / "site").mkdir()
    site_record.write_record(
        tmp_path / "site", site_record.SiteRecord(str(tmp_path / "site"), tls_site.address, "fake")
    )
    other = SitePki(tmp_path / "other")
    stale = other.user("bob")  # its ca.pem is the other CA's
    code, text = _ws(["--identity", str(stale), "list"], capsys)
    assert code == 3
    assert "the server's certificate is not of a CA this side trusts" in text
    assert "does not answer" not in text and "site up" not in text
    # An identity of the site CA gets in.
    assert _ws(["--identity", str(tls_site.pki.user("bob")), "list"], capsys)[0] == 0


def test_a_certificate_the_service_refuses_is_said_not_taken_for_an_outage(
    tls_site: TlsSite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An identity whose ca.pem is the site's but whose certificate is of another CA:
    the service closes the connection in the handshake, with no TLS alert, and gRPC says
    only "Socket closed"; `ws` said the local site "does not answer" and to start it,
    while it ran. It now asks once more on its own, sees the service close the handshake
    after its certificate, and says so, naming the CA that issued it."""
    monkeypatch.setenv(site_record.SITE_ENV, str(tmp_path / "site"))
    monkeypatch.delenv("WS_SERVICE", raising=False)
    (tmp_path / "site").mkdir()
    site_record.write_record(
        tmp_path / "site", site_record.SiteRecord(str(tmp_path / "site"), tls_site.address, "fake")
    )
    mixed = tmp_path / "mixed"
    shutil.copytree(SitePki(tmp_path / "other").user("bob"), mixed)
    shutil.copy(tls_site.pki.ca.dir / pki.CA_CERT, mixed / "ca.pem")  # trusts the site
    code, text = _ws(["--identity", str(mixed), "list"], capsys)
    assert code == 3
    assert "the service closed the connection in the TLS handshake, after this identity's" in text
    assert "issued by another CA named" in text or "(its ca.pem holds " in text, text
    assert "does not answer" not in text and "site up" not in text
    code, text = _ws(["--identity", str(tls_site.pki.user("bob")), "list"], capsys)
    assert code == 0, text


def test_an_agent_whose_certificate_the_service_refuses_says_why_in_its_log(
    tls_site: TlsSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for an agent with a node certificate of another CA (and the site's
    ca.pem): its log said "Socket closed; retrying" at every try, and `site up`, which
    shows its last lines, left the admin guessing. It says why at its first failure."""
    mixed = tmp_path / "node-mixed"
    shutil.copytree(SitePki(tmp_path / "other").node("node9"), mixed)
    shutil.copy(tls_site.pki.ca.dir / pki.CA_CERT, mixed / "ca.pem")
    cfg = agent_config(tmp_path, "node9", tls_site.node_address, tls={"identity_dir": str(mixed)})
    agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir))
    with caplog.at_level(logging.WARNING, logger="agent"):
        agent.start()
        try:
            wait_for(
                lambda: "closed the connection in the TLS handshake" in caplog.text,
                what="the agent saying why the service refused it",
            )
        finally:
            agent.stop()
    assert "after this identity's certificate" in caplog.text
