"""The site PKI: identities carried in certificates, issuing, revoking, the CRL."""

from __future__ import annotations

import datetime
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workspace import identity, pki
from workspace.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from workspace.identity import Identity, Kind


def test_identity_round_trips_through_its_uris() -> None:
    alice = Identity(Kind.USER, "alice", admin=True, projects=("bio", "phys"))
    assert alice.uris() == [
        "workspace://user/alice",
        "workspace://role/admin",
        "workspace://project/bio",
        "workspace://project/phys",
    ]
    assert identity.from_uris(alice.uris()) == alice
    assert identity.from_uris(["workspace://node/n1"]).principal == "node:n1"


@pytest.mark.parametrize(
    ("uris", "why"),
    [
        ([], "names no workspace identity"),
        (["https://example.org/alice"], "names no workspace identity"),
        (["workspace://user/alice", "workspace://user/bob"], "more than one"),
        (["workspace://user/alice", "workspace://node/n1"], "more than one"),
        (["workspace://node/n1", "workspace://role/admin"], "carries roles"),
        (["workspace://user/Alice"], "not a valid user name"),
        (["workspace://user/alice\n"], "not a valid user name"),
        (["workspace://user/"], "not a valid user name"),
    ],
)
def test_certificates_without_one_clear_identity_are_refused(uris: list[str], why: str) -> None:
    with pytest.raises(PermissionDenied, match=why):
        identity.from_uris(uris)


def test_a_certificate_with_only_a_common_name_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PermissionDenied, match="names no workspace identity"):
        identity.from_pem(cert.public_bytes(serialization.Encoding.PEM))


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    ("who", "why"),
    [
        (Identity(Kind.USER, "Alice"), "'Alice' is not a valid user name"),
        (Identity(Kind.NODE, "n1/x"), "'n1/x' is not a valid node name"),
        (Identity(Kind.USER, "alice", projects=("Bad!",)), "'Bad!' is not a valid project name"),
    ],
)
def test_the_ca_refuses_an_invalid_name_as_a_bad_request(
    tmp_path: Path, who: Identity, why: str
) -> None:
    """Asked to issue for a name no certificate may carry, the CA says what is wrong
    (InvalidArgument: the request, not the caller's rights) and writes nothing."""
    ca = pki.init(tmp_path / "ca")
    with pytest.raises(InvalidArgument, match=why):
        ca.issue(who, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert ca.issued() == []


def test_issue_writes_an_identity_directory_with_private_key_files(tmp_path: Path) -> None:
    ca = pki.init(tmp_path / "ca")
    assert _mode(tmp_path / "ca") == 0o700 and _mode(tmp_path / "ca" / "ca.key") == 0o600
    who = Identity(Kind.USER, "alice", projects=("phys",))
    before = int(time.time())
    row = ca.issue(who, tmp_path / "alice")
    after = time.time()
    assert _mode(tmp_path / "alice") == 0o700
    assert _mode(tmp_path / "alice" / "key.pem") == 0o600
    got = pki.identity_of_dir(tmp_path / "alice")
    # issued_at: when the CA issued it (whole seconds), not its backdated notBefore.
    assert before <= got.issued_at <= after
    assert got == Identity(
        Kind.USER, "alice", projects=("phys",), serial=row.serial, issued_at=got.issued_at
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "alice" / "cert.pem").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "alice" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    with pytest.raises(AlreadyExists):
        ca.issue(who, tmp_path / "alice")
    with pytest.raises(AlreadyExists):
        pki.init(tmp_path / "ca")


def _cert(d: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())


def _dns(d: Path) -> list[str]:
    san = _cert(d).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def _usage(d: Path) -> set[x509.ObjectIdentifier]:
    return set(_cert(d).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_service_certificates_name_their_hosts_and_what_they_are(tmp_path: Path) -> None:
    ca = pki.init(tmp_path / "ca")
    ca.issue(
        Identity(Kind.SERVICE, "ws.example.org"), tmp_path / "svc", ["ws.example.org", "10.0.0.5"]
    )
    san = _cert(tmp_path / "svc").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # the name every client checks (rpc.channel), added by the CA, then the hosts asked for
    assert _dns(tmp_path / "svc") == ["service.workspace.invalid", "ws.example.org"]
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert _usage(tmp_path / "svc") == {ExtendedKeyUsageOID.SERVER_AUTH}  # it calls nothing


def test_each_kind_may_do_only_what_it_does(tmp_path: Path) -> None:
    """A user's certificate is a client's only and names no host (users never serve); a
    node's names its node (peers check it) and may serve and call."""
    ca = pki.init(tmp_path / "ca")
    ca.issue(Identity(Kind.USER, "alice", admin=True), tmp_path / "alice")
    assert _usage(tmp_path / "alice") == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _dns(tmp_path / "alice") == []
    ca.issue(Identity(Kind.NODE, "n1"), tmp_path / "n1", ["n1.example.org"])
    assert _dns(tmp_path / "n1") == ["n1.node.workspace.invalid", "n1.example.org"]
    assert _usage(tmp_path / "n1") == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    with pytest.raises(InvalidArgument, match="a user certificate names no hosts"):
        ca.issue(Identity(Kind.USER, "bob"), tmp_path / "bob", ["bob.example.org"])
    assert not (tmp_path / "bob").exists()


@pytest.mark.parametrize(
    ("who", "host"),
    [
        (Identity(Kind.NODE, "n1"), "service.workspace.invalid"),
        (Identity(Kind.NODE, "n1"), "n2.node.workspace.invalid"),
        (Identity(Kind.NODE, "n1"), "SERVICE.WORKSPACE.INVALID."),
        (Identity(Kind.SERVICE, "head"), "anything.invalid"),
    ],
)
def test_the_ca_refuses_names_under_invalid_as_hosts(
    tmp_path: Path, who: Identity, host: str
) -> None:
    """Only the CA gives the names that prove what a server is: nobody gets the
    service's name, or another node's, by asking for it as a host."""
    ca = pki.init(tmp_path / "ca")
    with pytest.raises(InvalidArgument, match=r"under \.invalid, reserved"):
        ca.issue(who, tmp_path / "out", [host])
    assert not (tmp_path / "out").exists()
    assert ca.issued() == []


def test_revoke_by_name_or_serial_publishes_a_crl_read_without_restart(tmp_path: Path) -> None:
    ca = pki.init(tmp_path / "ca")
    a = ca.issue(Identity(Kind.USER, "alice"), tmp_path / "alice")
    b = ca.issue(Identity(Kind.NODE, "n1"), tmp_path / "n1")
    crl = pki.Revocations(str(tmp_path / "ca" / "crl.pem"), str(tmp_path / "ca" / "ca.pem"))
    assert crl.serials() == frozenset()
    assert [r.name for r in ca.revoke("alice")] == ["alice"]
    assert crl.is_revoked(a.serial) and not crl.is_revoked(b.serial)
    ca.revoke(hex(b.serial))
    assert crl.serials() == {a.serial, b.serial}
    with pytest.raises(NotFound):
        ca.revoke("nobody")
    # A serial the service names for a node's binding, of a CA lost with a restore: the
    # message says why it is not here and where the way out is.
    with pytest.raises(NotFound, match=r"another CA's .* 'Restoring a site'"):
        ca.revoke("0x5adbe95b22c7c64641e3a2facbfa2f5f79cf6c73")


def test_a_name_two_kinds_share_is_revoked_only_with_its_kind(tmp_path: Path) -> None:
    """A local site's admin user and its node are both ``local``: revoking one by name
    revoked the other too."""
    ca = pki.init(tmp_path / "ca")
    user = ca.issue(Identity(Kind.USER, "local", admin=True), tmp_path / "u")
    node = ca.issue(Identity(Kind.NODE, "local"), tmp_path / "n")
    with pytest.raises(InvalidArgument, match="say which: node:local or user:local"):
        ca.revoke("local")
    assert not any(r.revoked for r in ca.issued())
    assert [(r.kind, r.serial) for r in ca.revoke("node:local")] == [("node", node.serial)]
    assert {r.serial for r in ca.issued() if r.revoked} == {node.serial}
    assert user.serial not in {r.serial for r in ca.issued() if r.revoked}


def test_certificates_and_crls_are_world_readable_never_writable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ca = pki.init(tmp_path / "ca")
        ca.issue(Identity(Kind.USER, "alice"), tmp_path / "alice")
        ca.revoke("alice")
    finally:
        os.umask(old)
    public = [tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "crl.pem"]
    public += [tmp_path / "alice" / "cert.pem", tmp_path / "alice" / "ca.pem"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in public] == [0o644] * 4
    assert stat.S_IMODE((tmp_path / "alice" / "key.pem").stat().st_mode) == 0o600


def test_each_crl_is_numbered_above_the_last(tmp_path: Path) -> None:
    ca = pki.init(tmp_path / "ca")
    crl = tmp_path / "ca" / "crl.pem"
    first = pki.crl_number(crl)
    ca.issue(Identity(Kind.USER, "alice"), tmp_path / "alice")
    ca.revoke("alice")
    assert first >= 1 and pki.crl_number(crl) == first + 1


def test_an_older_crl_put_back_is_refused_and_the_newer_stays(tmp_path: Path) -> None:
    """A copy of last week's crl.pem (signed by the CA, so it verifies) once brought a
    revoked user back."""
    ca = pki.init(tmp_path / "ca")
    dave = ca.issue(Identity(Kind.USER, "dave"), tmp_path / "dave")
    path = tmp_path / "ca" / "crl.pem"
    old = path.read_bytes()
    crl = pki.Revocations(str(path), str(tmp_path / "ca" / "ca.pem"))
    ca.revoke("dave")
    assert crl.is_revoked(dave.serial) and crl.error == ""
    path.write_bytes(old)
    assert crl.is_revoked(dave.serial)  # still
    assert "older than number" in crl.error and "refused" in crl.error
    assert crl.error.endswith("the revocations read before stay in force")
    ca.publish_crl()  # a new one, numbered above both: taken
    assert crl.is_revoked(dave.serial) and crl.error == ""


def test_a_crl_past_its_next_update_is_used_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = pki.init(tmp_path / "ca")
    dave = ca.issue(Identity(Kind.USER, "dave"), tmp_path / "dave")
    ca.revoke("dave")
    crl = pki.Revocations(str(tmp_path / "ca" / "crl.pem"), str(tmp_path / "ca" / "ca.pem"))
    assert crl.is_revoked(dave.serial) and crl.error == ""
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=pki.CRL_DAYS + 1)
    monkeypatch.setattr(pki, "_now", lambda: later)
    assert crl.is_revoked(dave.serial)  # what it revokes stays revoked
    assert "is past its next update" in crl.error and "publish a new one" in crl.error


def test_a_crl_not_signed_by_the_site_ca_is_refused(tmp_path: Path) -> None:
    ca = pki.init(tmp_path / "ca")
    a = ca.issue(Identity(Kind.USER, "alice"), tmp_path / "alice")
    other = pki.init(tmp_path / "other")
    crl = pki.Revocations(str(tmp_path / "ca" / "crl.pem"), str(tmp_path / "ca" / "ca.pem"))
    assert crl.serials() == frozenset()
    other.publish_crl([a.serial])
    os.replace(tmp_path / "other" / "crl.pem", tmp_path / "ca" / "crl.pem")
    assert not crl.is_revoked(a.serial)
    assert "does not verify" in crl.error


def test_an_identity_directory_must_be_complete(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cert.pem").write_text("x")
    with pytest.raises(NotFound, match=r"missing ca\.pem, key\.pem"):
        pki.load_identity_dir(tmp_path / "half")


def test_a_changed_crl_is_told_to_listeners_once(tmp_path: Path) -> None:
    ca = pki.init(tmp_path / "ca")
    a = ca.issue(Identity(Kind.NODE, "n1"), tmp_path / "n1")
    crl = pki.Revocations(str(tmp_path / "ca" / "crl.pem"), str(tmp_path / "ca" / "ca.pem"))
    told: list[frozenset[int]] = []
    crl.on_change(told.append)
    crl.serials()
    assert told == []  # the first read revokes nothing: nothing changed
    ca.revoke("n1")
    assert crl.is_revoked(a.serial) and crl.is_revoked(a.serial)
    assert told == [frozenset({a.serial})]
    ca.publish_crl()  # signed again, the same serials: read again, nothing to tell
    crl.serials()
    assert told == [frozenset({a.serial})]
    crl.off_change(told.append)
    ca.issue(Identity(Kind.NODE, "n2"), tmp_path / "n2")
    ca.revoke("n2")
    assert len(crl.serials()) == 2 and len(told) == 1


def test_a_bundle_of_two_cas_checks_each_certificate_against_its_own_cas_crl(
    tmp_path: Path,
) -> None:
    """During a CA rotation: a CRL per CA (``pki.bundle``), each verified against its own
    CA; a serial the old CA lists does not revoke the new CA's certificate of that
    serial; a CRL of a CA outside the bundle is refused."""
    old, new = pki.init(tmp_path / "old"), pki.init(tmp_path / "new")
    new.issue(Identity(Kind.USER, "carol"), tmp_path / "carol")
    carol = pki.identity_of_dir(tmp_path / "carol")
    assert carol.authority == identity.key_id(new.cert)
    old.publish_crl([carol.serial])  # the old CA lists a serial it never issued
    dist = pki.bundle([old.dir, new.dir], tmp_path / "dist")
    crl = pki.Revocations(str(dist / "crl.pem"), str(dist / "ca.pem"))
    assert not crl.is_revoked(carol.serial, carol.authority) and crl.error == ""
    new.revoke("carol")
    pki.bundle([old.dir, new.dir], dist)
    assert crl.is_revoked(carol.serial, carol.authority) and crl.error == ""
    # Only the new CA's list, the bundle still holding both (its crl.pem copied where the
    # bundle's goes): said; the new list is used, and the old CA's list read before stays
    # in force, so what the old CA revoked stays revoked.
    old.issue(Identity(Kind.USER, "alice"), tmp_path / "alice")
    alice = pki.identity_of_dir(tmp_path / "alice")
    old.revoke("alice")
    pki.bundle([old.dir, new.dir], dist)
    assert crl.is_revoked(alice.serial, alice.authority)
    (dist / "crl.pem").write_bytes((new.dir / "crl.pem").read_bytes())
    assert crl.is_revoked(carol.serial, carol.authority)
    assert crl.is_revoked(alice.serial, alice.authority)
    assert "holds no list of the CA" in crl.error and "read before" in crl.error
    # A CRL of a CA outside the bundle: refused, what was read stays in force.
    other = pki.init(tmp_path / "other")
    (dist / "crl.pem").write_bytes((other.dir / "crl.pem").read_bytes())
    assert crl.is_revoked(carol.serial, carol.authority)
    assert "does not verify against the site CA" in crl.error
