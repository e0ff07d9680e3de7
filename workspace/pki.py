"""The site's PKI: a CA, identity directories for users, nodes and the service, and a CRL.

Layout of a CA directory (0700; keys 0600)::

    ca.pem  ca.key          the site CA (ECDSA P-256, self-signed)
    crl.pem                 the certificate revocation list, re-signed at every revoke
    issued.json             what was issued: serial → kind, name, not_after, revoked

An identity directory (``ws-admin pki issue … --out DIR``) holds ``ca.pem`` (to check
the other side), ``cert.pem`` and ``key.pem``. The identity itself is carried in the
certificate's subjectAltName URIs (``workspace/identity.py``); a server's certificate
also carries the DNS name that proves what it is (``identity.tls_name``: the service's,
or its node's), which only this CA adds. A user's certificate is a client's only (extended key usage
CLIENT_AUTH) and names no hosts; the service's is a server's only (SERVER_AUTH).

Nothing here talks to the network or to the service: the CA can live on an offline
host, and ``crl.pem`` is copied to where the service and agents read it
(``[tls] crl_file``); they reload it when it changes, without a restart. During a CA
rotation (``bundle``) every party's CA file holds the old and the new CA, and its CRL
file a CRL of each; a certificate is checked against its own CA's.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workspace import tls_reload
from workspace.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from workspace.files import write_private, write_public
from workspace.identity import (
    BACKDATE_S,
    NODE_TLS_SUFFIX,
    SERVICE_TLS_NAME,
    Identity,
    Kind,
    from_pem,
    key_id,
    name_problem,
    reserved_host,
    tls_name,
)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL = "crl.pem"
INDEX = "issued.json"
# The serials revoked as replaced by a certificate of the same identity (RFC 5280
# "superseded": the local site's renewal, site/identities.py), not as no longer trusted:
# their CRL entries say so, and the service refuses them without taking their node for
# lost. A file of its own: releases before it read INDEX's rows field by field.
SUPERSEDED_INDEX = "superseded.json"
CERT = "cert.pem"
KEY = "key.pem"
CA_DAYS = 3650
CERT_DAYS = 365
CRL_DAYS = 30
# The CRL reason of a certificate a new one of the same identity replaced (Issued.superseded).
SUPERSEDED = x509.ReasonFlags.superseded

log = logging.getLogger("workspace.pki")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _not_a_directory(path: Path) -> Path | None:
    """``path`` itself, or the directory above it, that is there but no directory (a
    file): nothing can be made in it (mkdir said only "File exists" or "Not a
    directory")."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    serial: int
    kind: str
    name: str
    not_after: str
    revoked: bool = False


class CA:
    """A CA directory made by ``init``."""

    def __init__(self, ca_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(ca_dir)
        if not (self.dir / CA_CERT).exists() or not (self.dir / CA_KEY).exists():
            raise NotFound(
                f"no site CA in {self.dir}; make one with `ws-admin pki init`, or name the "
                f"directory that holds it (`--dir DIR` or $WS_PKI_DIR)"
            )
        self.cert = x509.load_pem_x509_certificate((self.dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((self.dir / CA_KEY).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{self.dir / CA_KEY} is not an EC private key")
        self.key = key
        self._lock = threading.Lock()

    # -- the index of what was issued ---------------------------------------------------------

    def issued(self) -> list[Issued]:
        path = self.dir / INDEX
        if not path.exists():
            return []
        return [Issued(**row) for row in json.loads(path.read_text())]

    def superseded(self) -> set[int]:
        """The serials revoked as superseded (``SUPERSEDED_INDEX``)."""
        path = self.dir / SUPERSEDED_INDEX
        return set(json.loads(path.read_text())) if path.exists() else set()

    def _save(self, rows: Iterable[Issued]) -> None:
        data = [r.__dict__ for r in sorted(rows, key=lambda r: r.serial)]
        write_private(self.dir / INDEX, json.dumps(data, indent=1).encode(), sync=True)

    # -- issuing ------------------------------------------------------------------------------

    def issue(
        self,
        identity: Identity,
        out_dir: str | os.PathLike[str],
        hosts: Iterable[str] = (),
        days: int = CERT_DAYS,
        ca_bundle: bytes | None = None,
    ) -> Issued:
        """Write an identity directory (ca.pem, cert.pem, key.pem) for ``identity``.

        ``hosts`` are the DNS names and addresses a service (or a node serving peers)
        is reached at; they go into the certificate as DNS/IP subjectAltNames. The CA
        adds the name that proves what the server is (``identity.tls_name``) itself,
        refuses hosts under ``.invalid`` (reserved for those names) and any host for a
        user. What the key may do follows the kind (``extended_key_usage``).
        ``ca_bundle`` (PEM; it must hold this CA) is the ``ca.pem`` written, instead of
        this CA alone: the old and the new CA during a CA rotation (``bundle``).
        """
        names = [(identity.kind, identity.name, "")]
        names += [(Kind.USER, p, "project") for p in identity.projects]
        for kind, name, what in names:
            problem = name_problem(kind, name, what)
            if problem:  # a request the CA refuses: InvalidArgument (exit 1)
                raise InvalidArgument(problem)
        hosts = list(hosts)
        problem = hosts_problem(identity, hosts)
        if problem:
            raise InvalidArgument(problem)
        trusted = self.cert.public_bytes(serialization.Encoding.PEM)
        if ca_bundle is not None:
            try:
                cas = x509.load_pem_x509_certificates(ca_bundle)
            except ValueError as exc:
                raise InvalidArgument(f"the CA bundle is not PEM certificates ({exc})") from None
            if self.cert not in cas:
                raise InvalidArgument(
                    f"the CA bundle does not hold the CA of {self.dir} that issues this "
                    "certificate (make it with `ws-admin pki bundle`)"
                )
            trusted = ca_bundle
        out = _private_dir(Path(out_dir))
        if (out / KEY).exists():
            raise AlreadyExists(f"{out} already holds an identity; choose another --out")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        serial = x509.random_serial_number()
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in identity.uris()]
        if tls_name(identity.kind, identity.name):
            sans.append(x509.DNSName(tls_name(identity.kind, identity.name)))
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.principal)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_S))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(extended_key_usage(identity.kind)), critical=False)
            # Which CA key signed it: TLS libraries pick the issuer among CAs of the same
            # name (a bundle of the old and the new CA, every one "workspace site CA",
            # during a CA rotation) by this, not by trying each one.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        write_private(out / KEY, _key_pem(key), sync=True)
        write_public(out / CERT, cert.public_bytes(serialization.Encoding.PEM))
        write_public(out / CA_CERT, trusted)
        row = Issued(
            serial, identity.kind.value, identity.name, cert.not_valid_after_utc.isoformat()
        )
        with self._lock:
            self._save([*self.issued(), row])
        return row

    # -- revoking -----------------------------------------------------------------------------

    def revoke(self, ref: str, superseded: bool = False) -> list[Issued]:
        """Revoke every certificate of name ``ref`` (``KIND:NAME`` for one kind's: a user
        and a node may share a name), or the one with serial ``ref`` (decimal or 0x-hex),
        and publish a new CRL. Returns what was revoked. A bare name that two kinds
        share is refused (InvalidArgument): revoking the admin ``local`` must not also
        revoke the node ``local``. ``superseded``: a certificate of the same identity
        replaces it (``SUPERSEDED_INDEX``); else a revocation of one revoked so before
        makes it one of distrust."""
        kind, _, name = ref.partition(":")
        if kind not in {k.value for k in Kind}:
            kind, name = "", ref
        with self._lock:
            rows = self.issued()
            hit = [r for r in rows if r.name == name and kind in ("", r.kind)]
            kinds = sorted({r.kind for r in hit})
            if len(kinds) > 1:
                raise InvalidArgument(
                    f"{name!r} names certificates of several kinds ({', '.join(kinds)}); say "
                    f"which: {' or '.join(f'{k}:{name}' for k in kinds)}"
                )
            if not kind:
                hit += [r for r in rows if _serial_matches(ref, r.serial) and r not in hit]
            if not hit:
                raise NotFound(
                    f"no certificate named {ref!r} or with that serial was issued here (the "
                    f"CA in {self.dir}); another CA's (a site restored without its CA) "
                    "cannot be revoked here: see docs/security.md, 'Restoring a site'"
                )
            serials = {r.serial for r in hit}
            rows = [
                Issued(r.serial, r.kind, r.name, r.not_after, True) if r.serial in serials else r
                for r in rows
            ]
            self._save(rows)
            before = self.superseded()
            after = (before | serials) if superseded else (before - serials)
            if after != before:
                data = json.dumps(sorted(after)).encode()
                write_private(self.dir / SUPERSEDED_INDEX, data, sync=True)
            self.publish_crl(r.serial for r in rows if r.revoked)
        return [r for r in rows if r.serial in serials]

    def publish_crl(self, serials: Iterable[int] | None = None) -> Path:
        """Sign and write crl.pem listing ``serials`` (default: every revoked one)."""
        if serials is None:
            serials = [r.serial for r in self.issued() if r.revoked]
        superseded = self.superseded()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + datetime.timedelta(days=CRL_DAYS))
        )
        for serial in sorted(set(serials)):
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            if serial in superseded:
                entry = entry.add_extension(x509.CRLReason(SUPERSEDED), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        path = self.dir / CRL
        # Each CRL is numbered one above the last (RFC 5280 cRLNumber): a reader holding
        # a newer list refuses an older one put back (a revocation undone by a copy).
        builder = builder.add_extension(x509.CRLNumber(crl_number(path) + 1), critical=False)
        # Which CA key signed it (a CRL file of several CAs during a CA rotation).
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            critical=False,
        )
        crl = builder.sign(self.key, hashes.SHA256())
        write_public(path, crl.public_bytes(serialization.Encoding.PEM), sync=True)
        return path


def bundle(ca_dirs: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``ca.pem`` (every CA's certificate) and ``crl.pem`` (every CA's current CRL)
    of the CA directories ``ca_dirs`` into ``out_dir``: what every party's ``[tls]``
    ca_file and crl_file hold during a CA rotation (the old and the new CA), and, with
    the new CA alone, after it. Run again after each revoke by either CA."""
    dirs = [Path(d) for d in dict.fromkeys(Path(d).expanduser().absolute() for d in ca_dirs)]
    if not dirs:
        raise InvalidArgument("name the CA directories to bundle (the old and the new CA)")
    cas, crls = b"", b""
    for d in dirs:
        ca = CA(d)  # a CA directory (refused with how to make one)
        crl = d / CRL
        if not crl.exists():
            ca.publish_crl()
        cas += ca.cert.public_bytes(serialization.Encoding.PEM)
        crls += crl.read_bytes()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_public(out / CA_CERT, cas, sync=True)
    write_public(out / CRL, crls, sync=True)
    return out


def crl_number(path: Path) -> int:
    """The cRLNumber of the CRL in ``path`` (0: none, unreadable, or not numbered)."""
    try:
        return _number_of(x509.load_pem_x509_crl(path.read_bytes()))
    except (OSError, ValueError):
        return 0


def _number_of(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0  # a CRL published before they were numbered


def hosts_problem(identity: Identity, hosts: Iterable[str]) -> str:
    """Why the CA refuses to put ``hosts`` in ``identity``'s certificate ("": it does not)."""
    hosts = list(hosts)
    if identity.is_user and hosts:
        return (
            f"a user certificate names no hosts (users never serve): {', '.join(hosts)}; "
            "hosts are for the service and for nodes serving peers"
        )
    for h in hosts:
        if reserved_host(h):
            return (
                f"host {h!r} is under .invalid, reserved for the names the CA itself gives "
                f"servers ({SERVICE_TLS_NAME} for the service, NODE{NODE_TLS_SUFFIX} for a "
                "node): give the names and addresses the server is reached at"
            )
    return ""


def extended_key_usage(kind: Kind) -> list[x509.ObjectIdentifier]:
    """What a certificate of ``kind`` may be used for: a user's, a client's only (users
    never serve); the service's, a server's only (it calls nothing); a node's, both (it
    calls the service and its peers, and serves peers)."""
    if kind is Kind.USER:
        return [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind is Kind.SERVICE:
        return [ExtendedKeyUsageOID.SERVER_AUTH]
    return [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]


def _serial_matches(ref: str, serial: int) -> bool:
    try:
        return int(ref, 0) == serial
    except ValueError:
        return False


def init(ca_dir: str | os.PathLike[str], name: str = "workspace site CA") -> CA:
    """Make a new site CA in ``ca_dir`` (refuses to overwrite one)."""
    blocked = _not_a_directory(Path(ca_dir))
    if blocked is not None:
        where = "" if blocked == Path(ca_dir) else f"{ca_dir}: "
        raise InvalidArgument(
            f"{where}{blocked} is a file, not a directory: the CA is made in a directory "
            "(`--dir DIR` or $WS_PKI_DIR)"
        )
    d = _private_dir(Path(ca_dir))
    if (d / CA_KEY).exists():
        raise AlreadyExists(f"{d} already holds a CA")
    if not name.strip():
        raise InvalidArgument("the CA needs a name")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_private(d / CA_KEY, _key_pem(key), sync=True)
    write_public(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    ca = CA(d)
    ca.publish_crl([])
    return ca


class Revocations:
    """The serials the CRLs of a file revoke, re-read whenever it changes (no restart).

    The file holds one CRL per CA of the CA bundle (``ca_file``: one CA, or the old and
    the new one during a CA rotation; ``ws-admin pki bundle`` writes both files). Each
    CRL's signature is checked against the CA of the bundle that issued it; a file
    holding a CRL that verifies against none of them is refused (the previous lists stay
    in force and the error is reported). A certificate is checked against its own CA's
    list (by its authority key identifier), and against all of them when it names no CA.
    Every reader checks the CRL file and the bundle (a stat each: ``tls_reload``) and
    re-reads them if one changed; ``on_change`` listeners are called, in the thread that
    read it, when the serials revoked changed.
    """

    def __init__(self, crl_file: str, ca_file: str) -> None:
        self.crl_file = crl_file
        self.bundle = tls_reload.CaBundle(ca_file) if ca_file else None
        self._stamp: tuple[object, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._superseded: frozenset[int] = frozenset()
        self._by_ca: dict[bytes, frozenset[int]] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[frozenset[int]], None]] = []
        # The cRLNumber of each CA's list in force (a CA not here: none read yet).
        self._numbers: dict[bytes, int] = {}
        self._next_update: datetime.datetime | None = None
        self._lacking = ""  # the CAs of the bundle without a list in the file
        self.error = ""

    def on_change(self, listener: Callable[[frozenset[int]], None]) -> None:
        """Call ``listener`` with the revoked serials whenever a read changes them (the
        first read too, if the CRL revokes any)."""
        self._listeners.append(listener)

    def off_change(self, listener: Callable[[frozenset[int]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def serials(self) -> frozenset[int]:
        """Every serial revoked now, by any CA's list (the files are checked first)."""
        if not self.crl_file:
            return frozenset()
        seen = tls_reload.stamp((Path(self.crl_file),))
        if seen is None:
            self.error = (
                f"CRL {self.crl_file} is missing; the revocations read before stay in force"
            )
            return self._serials
        if self.bundle is not None:
            self.bundle.certs()  # read again if it changed
        stamp = (seen, self.bundle.generation if self.bundle is not None else 0)
        if stamp != self._stamp:
            changed = False
            with self._lock:
                if stamp != self._stamp:
                    changed = self._load(stamp)
            if changed:
                for listener in list(self._listeners):
                    try:
                        listener(self._serials)
                    except Exception:
                        log.exception("a listener of CRL %s failed", self.crl_file)
        due = self._next_update
        if due is not None and not self.error and _now() > due:
            # Still used (what it revokes stays revoked), but said: a CA that stopped
            # publishing would let a revocation made since go unseen.
            self.error = (
                f"CRL {self.crl_file} is past its next update ({due:%Y-%m-%d %H:%M} UTC): "
                "publish a new one (`ws-admin pki revoke` re-signs it) and copy it here"
            )
        if not self.error and self._lacking:
            self.error = self._lacking
        return self._serials

    def _issuer(self, crl: x509.CertificateRevocationList) -> bytes:
        """The key identifier of the bundle's CA that signed ``crl`` (b"": no bundle to
        check against); ValueError if none did."""
        if self.bundle is None:
            return b""
        for ca in self.bundle.certs():
            if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return key_id(ca)
        return _refuse(
            f"a CRL in it (of {crl.issuer.rfc4514_string()}) does not verify against the "
            f"site CA, nor any CA of the bundle {self.bundle.file}"
        )

    def _load(self, stamp: tuple[object, int]) -> bool:
        """Read the CRLs; whether the serials they revoke changed."""
        by_ca: dict[bytes, frozenset[int]] = {}
        numbers: dict[bytes, int] = {}
        due: list[datetime.datetime] = []
        superseded: set[int] = set()
        try:
            for crl in _crls(Path(self.crl_file).read_bytes()):
                kid = self._issuer(crl)
                if kid in by_ca:
                    _refuse("it holds two CRLs of one CA")
                number = _number_of(crl)
                if number < self._numbers.get(kid, -1):
                    _refuse(
                        f"it is number {number}, older than number {self._numbers[kid]} in "
                        "force (an old copy put back would undo the revocations made since)"
                    )
                by_ca[kid], numbers[kid] = frozenset(r.serial_number for r in crl), number
                superseded.update(r.serial_number for r in crl if _reason(r) == SUPERSEDED)
                if crl.next_update_utc is not None:
                    due.append(crl.next_update_utc)
        except (OSError, ValueError) as exc:
            self.error = (
                f"CRL {self.crl_file} refused: {exc}; the revocations read before stay in force"
            )
            self._stamp = stamp  # not read again until a file changes
            return False
        cas = self.bundle.certs() if self.bundle is not None else []
        lacking = [ca for ca in cas if key_id(ca) not in by_ca]
        # A CA still trusted whose list the file lacks (a CRL file copied before ca.pem
        # when the old CA is dropped; one CA's own crl.pem copied where the bundle's
        # goes) keeps the list read before: its revoked certificates stay revoked.
        for ca in lacking:
            if key_id(ca) in self._by_ca:
                by_ca[key_id(ca)] = self._by_ca[key_id(ca)]
                superseded.update(self._superseded & by_ca[key_id(ca)])
        old, self._serials = self._serials, frozenset().union(*by_ca.values())
        self._superseded = frozenset(superseded)
        self._by_ca = by_ca
        self._stamp = stamp
        self._numbers.update(numbers)  # a CA's number is kept if it leaves and comes back
        self._next_update = min(due, default=None)
        self._lacking = (
            f"CRL {self.crl_file} holds no list of the CA "
            f"{', '.join(ca.subject.rfc4514_string() for ca in lacking)} of "
            f"{self.bundle.file if self.bundle else ''} (key id "
            f"{', '.join(key_id(ca).hex()[:16] for ca in lacking)}): its list read before, "
            "if any, stays in force, and what it revokes from now on is not seen until the "
            "file has its list again (`ws-admin pki bundle` writes a CRL file of every CA)"
            if lacking
            else ""
        )
        self.error = ""
        return self._serials != old

    def superseded(self) -> frozenset[int]:
        """The serials revoked as replaced by a certificate of the same identity (their
        CRL reason "superseded"), of those ``serials`` read last."""
        return self._superseded

    def is_revoked(self, serial: int, authority: bytes = b"") -> bool:
        """Whether the certificate of ``serial`` signed by the CA key ``authority`` (its
        authority key identifier; b"": unknown) is revoked now (the files are checked)."""
        self.serials()
        return self.lists(serial, authority)

    def lists(self, serial: int, authority: bytes = b"") -> bool:
        """Whether the lists read last revoke ``serial`` of ``authority``: its CA's list,
        or every list when the certificate names no CA of the bundle."""
        own = self._by_ca.get(authority) if authority else None
        return serial in (own if own is not None else self._serials)


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _refuse(why: str) -> bytes:
    raise ValueError(why)


def _crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every PEM CRL in ``data`` (one per CA); ValueError if there is none or one is bad."""
    marker = b"-----BEGIN X509 CRL-----"
    blocks = [marker + b for b in data.split(marker)[1:]]
    if not blocks:
        raise ValueError("it holds no PEM CRL")
    return [x509.load_pem_x509_crl(b) for b in blocks]


def load_identity_dir(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem) of an identity directory, checked to exist."""
    d = Path(path).expanduser()
    files = (d / CA_CERT, d / CERT, d / KEY)
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise NotFound(
            f"{d} is not an identity directory (missing {', '.join(missing)}); "
            "make one with `ws-admin pki issue`"
        )
    return files


def identity_of_dir(path: str | os.PathLike[str]) -> Identity:
    return from_pem(load_identity_dir(path)[1].read_bytes())


__all__ = [
    "CA",
    "Identity",
    "Issued",
    "Kind",
    "Revocations",
    "bundle",
    "identity_of_dir",
    "init",
    "load_identity_dir",
]
