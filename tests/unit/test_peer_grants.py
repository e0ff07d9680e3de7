"""Peer grants (workspace/grants.py): a peer serves node N blob D only with the service's
grant of D to N, unexpired, signed by an unrevoked service certificate of the site CA;
and the service's orders carry grants for the blobs they name peers for."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from images.model import Mode, Partition
from tests.functional.harness import SitePki
from workspace import grants, pki
from workspace.codec import node as codec
from workspace.config import ServiceConfig, load
from workspace.domain.model import BlobSources, Disk, Grant, Order
from workspace.domain.states import Desired
from workspace.edge import nodes as edge_nodes
from workspace.errors import PermissionDenied
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog
from workspace.ops.reports import granted
from workspace.ops.unit import Env
from workspace.store import Node, Store
from workspace.store.blobs import BlobRepository

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> SitePki:
    return SitePki(tmp_path_factory.mktemp("pki"))


def verifier(p: SitePki, clock: float | None = None) -> grants.Verifier:
    revocations = pki.Revocations(str(p.crl_file), str(p.ca.dir / pki.CA_CERT))
    now = time.time if clock is None else (lambda: clock)
    return grants.Verifier(p.ca.dir / pki.CA_CERT, revocations.is_revoked, now)


def grant_of(p: SitePki, node: str, digest: str) -> Grant:
    g = p.grants(node, [digest]).grant(digest)
    assert g is not None
    return g


def test_a_grant_of_the_service_lets_its_node_fetch_its_blob(site_pki: SitePki) -> None:
    assert verifier(site_pki).problem(grant_of(site_pki, "n2", D1), "n2", D1) == ""


def test_without_a_grant_a_node_is_refused(site_pki: SitePki) -> None:
    why = verifier(site_pki).problem(None, "rogue", D1)
    assert f"node rogue shows no grant from the service for {D1}" in why


def test_a_grant_for_another_node_or_blob_is_refused(site_pki: SitePki) -> None:
    v = verifier(site_pki)
    g = grant_of(site_pki, "n2", D1)
    assert "does not grant it" in v.problem(g, "rogue", D1)  # n2's grant shown by rogue
    assert "does not grant it" in v.problem(g, "n2", D2)  # n2's grant for another blob
    # its expiry moved later: the signature no longer matches
    later = Grant(g.certificate, g.expires_at + 3600, g.signature)
    assert "does not grant it" in v.problem(later, "n2", D1)


def test_an_expired_grant_is_refused(site_pki: SitePki) -> None:
    g = grant_of(site_pki, "n2", D1)
    assert verifier(site_pki, g.expires_at - 60).problem(g, "n2", D1) == ""
    assert "expired at" in verifier(site_pki, g.expires_at + 1).problem(g, "n2", D1)


def _signed_by(identity_dir: Path, node: str, digest: str) -> Grant:
    """A grant as the service makes them, but signed with the key in ``identity_dir``."""
    key = serialization.load_pem_private_key((identity_dir / pki.KEY).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate((identity_dir / pki.CERT).read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    expires = int(time.time()) + 600
    sig = key.sign(grants.message(node, digest, expires), ec.ECDSA(hashes.SHA256()))
    return Grant(der, expires, sig)


def test_a_grant_signed_by_a_node_or_another_ca_is_refused(
    site_pki: SitePki, tmp_path: Path
) -> None:
    v = verifier(site_pki)
    # a node (rogue) grants itself the blob with its own certificate of the site CA
    own = _signed_by(site_pki.node("rogue"), "rogue", D1)
    assert "is signed by node:rogue" in v.problem(own, "rogue", D1)
    # a "service" certificate of another CA
    other = SitePki(tmp_path / "other")
    foreign = _signed_by(other.service(), "rogue", D1)
    assert "not issued by the site CA" in v.problem(foreign, "rogue", D1)
    # the service's signature with another certificate put in its place
    g = grant_of(site_pki, "n2", D1)
    swapped = Grant(own.certificate, g.expires_at, g.signature)
    assert "is signed by node:rogue" in v.problem(swapped, "n2", D1)


def test_a_grant_of_a_revoked_service_certificate_is_refused(tmp_path: Path) -> None:
    p = SitePki(tmp_path)
    g = grant_of(p, "n2", D1)
    p.ca.revoke(hex(pki.identity_of_dir(p.service()).serial))
    assert "is revoked" in verifier(p).problem(g, "n2", D1)


def test_only_a_service_certificate_signs_grants(site_pki: SitePki) -> None:
    d = site_pki.node("n1")
    with pytest.raises(PermissionDenied, match="not a service"):
        grants.Signer(d / pki.CERT, d / pki.KEY)


def _order(wid: str, digest: str, sources: tuple[str, ...], kernel: str = "") -> Order:
    part = Partition(name="root", digest=digest, size_bytes=1, mode=Mode.COW)
    return Order(
        workspace_id=wid,
        name=wid,
        hostname=wid,
        desired=Desired.RUNNING,
        cpus=1,
        memory_mib=64,
        image="img",
        nics=(),
        disks=(Disk(part, sources, tuple(f"n{i}" for i in range(len(sources)))),),
        kernel_digest=kernel,
    )


def test_the_orders_grant_the_blobs_they_name_peers_for() -> None:
    k = "sha256:" + "4" * 64
    pre = "sha256:" + "5" * 64
    out = (
        _order("w1", D1, ("p1:1",), kernel=k),  # a disk with a peer: its kernel too
        _order("w2", D2, ()),  # no peer named: nothing to show a peer
    )
    prefetch = (BlobSources(pre, ("p2:1",), ("p2",)),)
    assert granted(out, prefetch) == [D1, k, pre]


class _Context:
    """A WatchAssignments call's context: no certificate (a site without TLS checks)."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return "test"

    def invocation_metadata(self) -> tuple[()]:
        return ()


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()  # when made, not when the module was imported

    def __call__(self) -> float:
        return self.now


def test_a_node_is_sent_fresh_grants_before_its_grants_expire(
    tmp_path: Path, site_pki: SitePki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders that do not change are sent again with fresh grants once theirs are
    ``REFRESH_S`` old: a node keeps fetching from peers however long its orders last."""
    monkeypatch.setattr(edge_nodes, "STREAM_POLL_S", 0.01)
    clock = _Clock()
    d = site_pki.service()
    cfg = load(ServiceConfig, None, data_dir=str(tmp_path))
    env = replace(
        Env.of(cfg, Store(f"sqlite:///{tmp_path}/db.sqlite"), Notifier(), clock=clock),
        grant_signer=grants.Signer(d / pki.CERT, d / pki.KEY, clock),
    )
    servicer = edge_nodes.NodesServicer(env, Catalog(env, BlobRepository(tmp_path / "blobs")))
    for name, address in (("n1", ""), ("p1", "p1:7071")):
        servicer.register(
            nodes_pb2.RegisterRequest(
                node=name, hypervisor="fake", cpus=1, memory_mib=1024, peer_address=address
            )
        )
    with env.store.write() as s:  # n1 is to preload D1, which p1 holds
        s.get(Node, "n1").prefetch = [D1]  # type: ignore[union-attr]
        s.get(Node, "p1").cached_digests = [D1]  # type: ignore[union-attr]
    sets = servicer.WatchAssignments(nodes_pb2.WatchAssignmentsRequest(node="n1"), _Context())
    first = next(sets)
    v = verifier(site_pki, clock.now)
    shown = codec.peer_grants_from_proto(first)
    assert shown is not None and v.problem(shown.grant(D1), "n1", D1) == ""
    assert v.problem(shown.grant(D1), "p1", D1) != ""  # n1's, nobody else's
    clock.now += grants.REFRESH_S
    again = next(sets)
    assert again.generation == first.generation  # nothing else changed
    fresh = codec.peer_grants_from_proto(again)
    assert fresh is not None and fresh.expires_at == shown.expires_at + grants.REFRESH_S
    clock.now = shown.expires_at + 1  # the first set's grants have expired; the new ones hold
    assert "expired" in verifier(site_pki, clock.now).problem(shown.grant(D1), "n1", D1)
    assert verifier(site_pki, clock.now).problem(fresh.grant(D1), "n1", D1) == ""


def _rotate(p: SitePki, into: Path, hosts: tuple[str, ...], key_too: bool = True) -> int:
    """A new service certificate (and key) for ``into`` (an identity directory), put in
    place as a rotation does (each file replaced whole); returns the old one's serial."""
    old = pki.identity_of_dir(into).serial
    new = p.issue(Identity(Kind.SERVICE, "localhost"), hosts)
    for name in (pki.CERT, pki.KEY) if key_too else (pki.CERT,):
        shutil.copyfile(new / name, into / f"{name}.new")
        os.replace(into / f"{name}.new", into / name)
    return old


def test_a_rotated_service_certificate_signs_the_grants_from_then_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's certificate is rotated and the old one revoked: the grants it
    signs from then on carry the new one (peers accept them), without a restart. A
    certificate put in place before its key is not used until the key follows."""
    p = SitePki(tmp_path / "pki")
    d = shutil.copytree(p.service(), tmp_path / "service")
    signer = grants.Signer(d / pki.CERT, d / pki.KEY)
    assert verifier(p).problem(signer.grants("n2", [D1]).grant(D1), "n2", D1) == ""
    # Half-way: the new certificate, the old key.
    old = _rotate(p, d, ("localhost", "a"), key_too=False)
    g = signer.grants("n2", [D1]).grant(D1)
    assert verifier(p).problem(g, "n2", D1) == ""  # the old pair, still whole
    assert "is not the key of the certificate" in caplog.text
    _rotate(p, d, ("localhost", "a"))
    p.ca.revoke(hex(old))
    g = signer.grants("n2", [D1]).grant(D1)
    assert g is not None and g.certificate == signer.certificate
    assert verifier(p).problem(g, "n2", D1) == ""
    assert signer.generation == 1


class _Ending(_Context):
    """A call whose client goes away after ``polls`` looks (so a stream that would not
    send again ends instead of waiting forever)."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def is_active(self) -> bool:
        self.polls -= 1
        return self.polls > 0


def test_a_node_is_sent_grants_of_the_new_certificate_once_it_is_rotated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders are sent again, grants signed by the new certificate, as soon as the
    service's certificate is rotated, not only once the old grants are an hour old."""
    monkeypatch.setattr(edge_nodes, "STREAM_POLL_S", 0.01)
    p = SitePki(tmp_path / "pki")
    d = shutil.copytree(p.service(), tmp_path / "service")
    cfg = load(ServiceConfig, None, data_dir=str(tmp_path))
    env = replace(
        Env.of(cfg, Store(f"sqlite:///{tmp_path}/db.sqlite"), Notifier()),
        grant_signer=grants.Signer(d / pki.CERT, d / pki.KEY),
    )
    servicer = edge_nodes.NodesServicer(env, Catalog(env, BlobRepository(tmp_path / "blobs")))
    for name, address in (("n1", ""), ("p1", "p1:7071")):
        servicer.register(
            nodes_pb2.RegisterRequest(
                node=name, hypervisor="fake", cpus=1, memory_mib=1024, peer_address=address
            )
        )
    with env.store.write() as s:
        s.get(Node, "n1").prefetch = [D1]  # type: ignore[union-attr]
        s.get(Node, "p1").cached_digests = [D1]  # type: ignore[union-attr]
    sets = servicer.WatchAssignments(nodes_pb2.WatchAssignmentsRequest(node="n1"), _Ending(500))
    first = codec.peer_grants_from_proto(next(sets))
    old = _rotate(p, d, ("localhost", "b"))
    p.ca.revoke(hex(old))
    assert first is not None and "is revoked" in verifier(p).problem(first.grant(D1), "n1", D1)
    resent = next(sets, None)
    assert resent is not None, "the orders were not sent again"
    again = codec.peer_grants_from_proto(resent)
    assert again is not None and verifier(p).problem(again.grant(D1), "n1", D1) == ""
