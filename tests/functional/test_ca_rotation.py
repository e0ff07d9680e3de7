"""A CA rotation with the daemons running, the steps docs/security.md gives ("Rotate the
CA"), through the real service and a fake-driver agent over mutual TLS: `ws-admin pki
init` a new CA, `pki bundle` the old and the new one into every party's ca.pem and
crl.pem (no restart), issue from the new CA, revoke with either (a certificate is
refused by its own CA's CRL), a peer grant signed by a service certificate of the new
CA is taken by a node that started before the rotation, and the old CA dropped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, SitePki, TlsSite, wait_for
from tests.functional.test_mtls import _peer_fetch
from workspace import config, grants, pki
from workspace.cli import admin
from workspace.client import Client
from workspace.config import TlsConfig
from workspace.errors import Unauthenticated, Unavailable
from workspace.v1 import images_pb2

FILES = ("ca.pem", "cert.pem", "key.pem")


def put(src: Path, live: Path, names: tuple[str, ...] = FILES) -> None:
    """Put ``src``'s files in ``live`` as an admin would: each renamed into place."""
    live.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, live / f".{name}.new")
        os.replace(live / f".{name}.new", live / name)


def ws_admin(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = admin.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def refused(identity: Path, address: str) -> str:
    """Why the service refuses ``identity`` now ("": it does not)."""
    try:
        with Client(address, TlsConfig(identity_dir=str(identity)), timeout_s=10) as c:
            c.list_workspaces()
    except (Unauthenticated, Unavailable) as exc:
        return str(exc)
    return ""


def test_a_ca_rotation_revokes_with_either_ca_and_takes_the_new_cas_grants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = SitePki(tmp_path / "old")
    new_dir, dist = tmp_path / "new" / "ca", tmp_path / "dist"
    crl = tmp_path / "live-crl.pem"  # every party's [tls] crl_file
    shutil.copyfile(old.crl_file, crl)
    svc = tmp_path / "live-service"
    put(old.service(), svc)
    site = TlsSite(
        tmp_path / "site",
        old,
        tls=config.to_dict(TlsConfig(identity_dir=str(svc), crl_file=str(crl))),
    )
    try:
        site.stubs.network()
        site.stubs.import_image("img", bytes([7]) * 4096)
        digest = str(
            site.stubs.images.GetImage(images_pb2.GetImageRequest(name="img")).partitions[0].digest
        )
        # A node of the old CA, running before the rotation begins (peers are checked
        # with what it read at its start, unless it reads the new files).
        p1 = tmp_path / "live-p1"
        put(old.node("p1"), p1)
        site.add_agent(
            "p1",
            tls=config.to_dict(TlsConfig(identity_dir=str(p1), crl_file=str(crl))),
            peer_listen=f"unix:{tmp_path / 'p1-peers.sock'}",
        )
        w = site.stubs.create(name="w1")  # p1 fetches the image's blob: it holds it
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)

        # 1. A new CA beside the old one: both in every ca.pem, a CRL of each in crl.pem.
        ws_admin(capsys, "pki", "init", "--dir", str(new_dir))
        ws_admin(capsys, "pki", "bundle", str(old.ca.dir), str(new_dir), "--out", str(dist))
        for live in (svc, p1):
            put(dist, live, ("ca.pem",))
        put(dist, tmp_path, ("crl.pem",))
        os.replace(tmp_path / "crl.pem", crl)

        # 2. Identities issued from the new CA, trusting both; the service's first.
        def issue(ca_dir: Path, kind: str, name: str, *extra: str) -> Path:
            out = tmp_path / "ids" / f"{ca_dir.parent.name}-{kind}-{name}"
            ws_admin(
                capsys, "pki", "issue", kind, name, *extra, "--dir", str(ca_dir),
                "--ca-file", str(dist / "ca.pem"), "--out", str(out),
            )  # fmt: skip
            return out

        put(issue(new_dir, "service", "localhost"), svc)
        carol = issue(new_dir, "user", "carol")  # of the new CA
        dave = issue(old.ca.dir, "user", "dave")  # of the old CA, issued before the end
        erin = issue(old.ca.dir, "user", "erin")
        for who in (carol, dave, erin):
            assert refused(who, site.address) == ""

        # 3. Revoke with either CA; the CRL file of both is published again each time.
        ws_admin(capsys, "pki", "revoke", "carol", "--dir", str(new_dir))
        ws_admin(capsys, "pki", "bundle", str(old.ca.dir), str(new_dir), "--out", str(dist))
        shutil.copyfile(dist / "crl.pem", crl)
        assert "user:carol has been revoked" in refused(carol, site.address)
        assert refused(dave, site.address) == ""
        ws_admin(capsys, "pki", "revoke", "dave", "--dir", str(old.ca.dir))
        ws_admin(capsys, "pki", "bundle", str(old.ca.dir), str(new_dir), "--out", str(dist))
        shutil.copyfile(dist / "crl.pem", crl)
        assert "user:dave has been revoked" in refused(dave, site.address)
        assert refused(erin, site.address) == ""
        assert site.service is not None and site.service.auth.revocations is not None
        assert site.service.auth.revocations.error == ""

        # 4. A node of the old CA takes a peer grant signed by the new CA's service
        # certificate (without reading its ca.pem again it refused it: "not issued by
        # the site CA"), and serves a node of the new CA.
        signed = grants.Signer(svc / pki.CERT, svc / pki.KEY).grants("p3", [digest])
        p3 = TlsConfig(identity_dir=str(issue(new_dir, "node", "p3")), crl_file=str(crl))
        peer = site.agents["p1"].peer_address
        assert _peer_fetch(peer, p3, digest, "p1", signed) == bytes([7]) * 4096
        # ... and refuses one the new CA revoked.
        ws_admin(capsys, "pki", "revoke", "node:p3", "--dir", str(new_dir))
        ws_admin(capsys, "pki", "bundle", str(old.ca.dir), str(new_dir), "--out", str(dist))
        shutil.copyfile(dist / "crl.pem", crl)
        with pytest.raises(grpc.RpcError) as err:
            _peer_fetch(peer, p3, digest, "p1", signed)
        assert "revoked" in (err.value.details() or "")

        # 5. The old CA dropped (crl.pem first, then ca.pem): its certificates are refused.
        ws_admin(capsys, "pki", "bundle", str(new_dir), "--out", str(dist))
        shutil.copyfile(dist / "crl.pem", crl)
        put(dist, svc, ("ca.pem",))
        frank = issue(new_dir, "user", "frank")
        assert refused(frank, site.address) == ""
        wait_for(lambda: refused(erin, site.address) != "", 10, "erin refused")
        assert site.service.auth.revocations.error == ""
    finally:
        site.close()
