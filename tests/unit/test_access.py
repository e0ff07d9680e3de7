"""The access rules (workspace/edge/auth.py): one table names every RPC's role, every RPC
of every servicer is guarded by it, and callers are identified from their certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from workspace import pki
from workspace.config import TlsConfig
from workspace.edge.admin import AdminServicer
from workspace.edge.auth import RULES, Authenticator, Role, node_name
from workspace.edge.clusters import ClustersServicer
from workspace.edge.guests import GuestsServicer
from workspace.edge.images import ImagesServicer
from workspace.edge.keys import KeysServicer
from workspace.edge.nodes import NodesServicer
from workspace.edge.projects import ProjectsServicer
from workspace.edge.trust import TrustServicer
from workspace.edge.workspaces import WorkspacesServicer
from workspace.errors import PermissionDenied, Unauthenticated
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.v1 import (
    access_pb2,
    admin_pb2,
    clusters_pb2,
    images_pb2,
    projects_pb2,
    trust_pb2,
    workspaces_pb2,
)

SERVICERS: list[Any] = [
    WorkspacesServicer,
    ClustersServicer,
    ImagesServicer,
    TrustServicer,
    AdminServicer,
    ProjectsServicer,
    NodesServicer,
    KeysServicer,
    GuestsServicer,
]
PROTOS = [
    workspaces_pb2,
    clusters_pb2,
    images_pb2,
    trust_pb2,
    admin_pb2,
    projects_pb2,
    health_pb2,
    access_pb2,
]


def served_rpcs() -> set[str]:
    names = {
        f"/{svc.full_name}/{m.name}"
        for mod in PROTOS
        for svc in mod.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    nodes = nodes_pb2.DESCRIPTOR.services_by_name["Nodes"]
    return names | {f"/{nodes.full_name}/{m.name}" for m in nodes.methods}


def test_every_rpc_has_exactly_one_rule() -> None:
    assert set(RULES) == served_rpcs()


@pytest.mark.parametrize("servicer", SERVICERS, ids=lambda s: s.__name__)
def test_every_rpc_of_a_servicer_is_guarded(servicer: Any) -> None:
    full = servicer.SERVICE
    proto = next(
        svc
        for mod in [*PROTOS, nodes_pb2]
        for svc in mod.DESCRIPTOR.services_by_name.values()
        if svc.full_name == full
    )
    for m in proto.methods:
        assert f"/{full}/{m.name}" in RULES
        method = getattr(servicer, m.name)
        # calls.unary/stream wrap the RPC: the caller is checked before it runs.
        assert hasattr(method, "__wrapped__"), f"{full}/{m.name} is not guarded"


class Ctx:
    """A stand-in for grpc.ServicerContext: only the peer's certificate."""

    def __init__(self, pem: bytes | None) -> None:
        self.pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]} if self.pem else {}


@pytest.fixture
def ca(tmp_path: Path) -> pki.CA:
    return pki.init(tmp_path / "ca")


def cert(ca: pki.CA, ident: Identity) -> bytes:
    out = ca.dir.parent / f"id-{ident.kind.value}-{ident.name}"
    ca.issue(ident, out)
    return (out / "cert.pem").read_bytes()


def authenticator(ca: pki.CA) -> Authenticator:
    tls = TlsConfig(ca_file=str(ca.dir / "ca.pem"), crl_file=str(ca.dir / "crl.pem"))
    return Authenticator(tls, "local")


def test_without_tls_every_caller_is_the_admin_default_owner() -> None:
    auth = Authenticator(TlsConfig(), "local")
    who = auth.authorize(Ctx(None), "/workspace.v1.Trust/SetMode")  # type: ignore[arg-type]
    assert (who.kind, who.name, who.admin) == (Kind.USER, "local", True)


def test_a_caller_without_a_certificate_is_unauthenticated(ca: pki.CA) -> None:
    with pytest.raises(Unauthenticated, match="no client certificate"):
        authenticator(ca).identify(Ctx(None))  # type: ignore[arg-type]


def test_a_certificate_naming_no_identity_is_refused(ca: pki.CA) -> None:
    """Signed by the site CA, with a CN but no workspace:// URI: not guessed from the CN."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    plain = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    pem = plain.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PermissionDenied, match="names no workspace identity"):
        authenticator(ca).identify(Ctx(pem))  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied, match="cannot be read"):
        authenticator(ca).identify(Ctx(b"-----BEGIN CERTIFICATE-----\nAAAA\n"))  # type: ignore[arg-type]


def test_identities_are_cached_by_certificate(ca: pki.CA) -> None:
    auth = authenticator(ca)
    pem = cert(ca, Identity(Kind.USER, "ana", projects=("p",)))
    first = auth.identify(Ctx(pem))  # type: ignore[arg-type]
    assert (first.name, first.projects) == ("ana", ("p",))
    assert auth.identify(Ctx(pem)) is first  # type: ignore[arg-type]


def test_a_revoked_certificate_is_refused_without_a_restart(ca: pki.CA) -> None:
    auth = authenticator(ca)
    pem = cert(ca, Identity(Kind.USER, "ana"))
    assert auth.identify(Ctx(pem)).name == "ana"  # type: ignore[arg-type]
    ca.revoke("ana")
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.identify(Ctx(pem))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ident", "method", "allowed"),
    [
        (Identity(Kind.USER, "ana"), "/workspace.v1.Workspaces/CreateWorkspace", True),
        (Identity(Kind.USER, "ana"), "/workspace.v1.Trust/AddKey", False),
        (Identity(Kind.USER, "ana"), "/workspace.node.v1.Nodes/Register", False),
        (Identity(Kind.USER, "root", admin=True), "/workspace.v1.Trust/AddKey", True),
        (Identity(Kind.USER, "root", admin=True), "/workspace.node.v1.Nodes/Register", False),
        (Identity(Kind.NODE, "n1"), "/workspace.node.v1.Nodes/Register", True),
        (Identity(Kind.NODE, "n1"), "/workspace.v1.Workspaces/ListWorkspaces", False),
        (Identity(Kind.SERVICE, "localhost"), "/workspace.v1.Workspaces/ListWorkspaces", False),
        (Identity(Kind.USER, "ana"), "/workspace.v1.Workspaces/NoSuchRpc", False),
    ],
)
def test_roles(ca: pki.CA, ident: Identity, method: str, allowed: bool) -> None:
    auth = authenticator(ca)
    ctx = Ctx(cert(ca, ident))
    if allowed:
        assert auth.authorize(ctx, method).name == ident.name  # type: ignore[arg-type]
    else:
        with pytest.raises(PermissionDenied):
            auth.authorize(ctx, method)  # type: ignore[arg-type]


def test_the_roles_the_protos_state_are_the_rules() -> None:
    """The protos are the API's reference. trust.proto marked GetPolicy "Policy (admin)"
    though any user may read the policy, and admin.proto said nothing of who may call
    the Admin service: both now say what RULES does."""
    protos = Path(__file__).resolve().parents[2] / "protos" / "workspace" / "v1"

    def text(name: str) -> str:  # the comments' words, as one line
        return " ".join((protos / name).read_text().replace("//", " ").split())

    admin = text("admin.proto")
    assert "admins only (PERMISSION_DENIED for any other caller), but for ListNetworks" in admin
    for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods:
        want = Role.USER if m.name == "ListNetworks" else Role.ADMIN
        assert RULES[f"/workspace.v1.Admin/{m.name}"] is want, m.name
    trust = text("trust.proto")
    assert "any user may read it (GetPolicy); only admins change it (AddKey," in trust
    assert RULES["/workspace.v1.Trust/GetPolicy"] is Role.USER
    for m in ("AddKey", "RevokeKey", "RevokeDigest", "SetMode", "ListAudit"):
        assert RULES[f"/workspace.v1.Trust/{m}"] is Role.ADMIN, m


def test_health_is_open() -> None:
    assert RULES["/grpc.health.v1.Health/Check"] is Role.OPEN


def test_a_node_acts_only_for_the_node_it_names() -> None:
    n1 = Identity(Kind.NODE, "n1", serial=7)
    assert node_name(n1, False, "n1") == "n1"
    with pytest.raises(PermissionDenied, match="cannot act for node 'n2'"):
        node_name(n1, False, "n2")
    # Without TLS, the request's node as given.
    assert node_name(Identity(Kind.USER, "local", admin=True), True, "n2") == "n2"
    with pytest.raises(PermissionDenied):
        node_name(Identity(Kind.USER, "root", admin=True), False, "n1")


def test_a_crl_that_does_not_verify_keeps_the_revocations_read_before(
    ca: pki.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = authenticator(ca)
    pem = cert(ca, Identity(Kind.USER, "ana"))
    ca.revoke("ana")
    with pytest.raises(Unauthenticated):
        auth.identify(Ctx(pem))  # type: ignore[arg-type]
    # A CRL signed by another CA replaces the site's: refused, said in the log, and the
    # revocation read before still holds.
    other = pki.init(tmp_path / "other")
    (ca.dir / "crl.pem").write_bytes((other.dir / "crl.pem").read_bytes() + b"\n")
    with pytest.raises(Unauthenticated):
        auth.identify(Ctx(pem))  # type: ignore[arg-type]
    assert "does not verify" in caplog.text
