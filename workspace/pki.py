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
(``[tls] crl_file``); they reload it when it changes, without a restart.
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

from workspace.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from workspace.files import write_private, write_public
from workspace.identity import (
    BACKDATE_S,
    NODE_TLS_SUFFIX,
    SERVICE_TLS_NAME,
    Identity,
    Kind,
    from_pem,
    name_problem,
    reserved_host,
    tls_name,
)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL = "crl.pem"
INDEX = "issued.json"
CERT = "cert.pem"
KEY = "key.pem"
CA_DAYS = 3650
CERT_DAYS = 365
CRL_DAYS = 30

log = logging.getLogger("workspace.pki")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


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
    ) -> Issued:
        """Write an identity directory (ca.pem, cert.pem, key.pem) for ``identity``.

        ``hosts`` are the DNS names and addresses a service (or a node serving peers)
        is reached at; they go into the certificate as DNS/IP subjectAltNames. The CA
        adds the name that proves what the server is (``identity.tls_name``) itself,
        refuses hosts under ``.invalid`` (reserved for those names) and any host for a
        user. What the key may do follows the kind (``extended_key_usage``).
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
        write_public(out / CA_CERT, self.cert.public_bytes(serialization.Encoding.PEM))
        row = Issued(
            serial, identity.kind.value, identity.name, cert.not_valid_after_utc.isoformat()
        )
        with self._lock:
            self._save([*self.issued(), row])
        return row

    # -- revoking -----------------------------------------------------------------------------

    def revoke(self, ref: str) -> list[Issued]:
        """Revoke every certificate of name ``ref`` (``KIND:NAME`` for one kind's: a user
        and a node may share a name), or the one with serial ``ref`` (decimal or 0x-hex),
        and publish a new CRL. Returns what was revoked. A bare name that two kinds
        share is refused (InvalidArgument): revoking the admin ``local`` must not also
        revoke the node ``local``."""
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
            self.publish_crl(r.serial for r in rows if r.revoked)
        return [r for r in rows if r.serial in serials]

    def publish_crl(self, serials: Iterable[int] | None = None) -> Path:
        """Sign and write crl.pem listing ``serials`` (default: every revoked one)."""
        if serials is None:
            serials = [r.serial for r in self.issued() if r.revoked]
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + datetime.timedelta(days=CRL_DAYS))
        )
        for serial in sorted(set(serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        path = self.dir / CRL
        # Each CRL is numbered one above the last (RFC 5280 cRLNumber): a reader holding
        # a newer list refuses an older one put back (a revocation undone by a copy).
        builder = builder.add_extension(x509.CRLNumber(crl_number(path) + 1), critical=False)
        crl = builder.sign(self.key, hashes.SHA256())
        write_public(path, crl.public_bytes(serialization.Encoding.PEM), sync=True)
        return path


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
    """The serials a CRL file revokes, re-read whenever the file changes (no restart).

    The CRL's signature is checked against the CA certificate; a CRL that does not
    verify is refused (the previous list stays in force and the error is reported).
    Every reader checks the file (a stat) and re-reads it if it changed; ``on_change``
    listeners are called, in the thread that read it, when the list it holds changed.
    """

    def __init__(self, crl_file: str, ca_file: str) -> None:
        self.crl_file = crl_file
        self.ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes()) if ca_file else None
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[frozenset[int]], None]] = []
        self._number = -1  # the cRLNumber of the list in force (-1: none read yet)
        self._next_update: datetime.datetime | None = None
        self.error = ""

    def on_change(self, listener: Callable[[frozenset[int]], None]) -> None:
        """Call ``listener`` with the revoked serials whenever a read changes them (the
        first read too, if the CRL revokes any)."""
        self._listeners.append(listener)

    def off_change(self, listener: Callable[[frozenset[int]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def serials(self) -> frozenset[int]:
        if not self.crl_file:
            return frozenset()
        try:
            st = os.stat(self.crl_file)
        except FileNotFoundError:
            self.error = f"CRL {self.crl_file} is missing"
            return self._serials
        stamp = (st.st_mtime_ns, st.st_size)
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
        return self._serials

    def _load(self, stamp: tuple[int, int]) -> bool:
        """Read the CRL; whether the serials it revokes changed."""
        try:
            crl = x509.load_pem_x509_crl(Path(self.crl_file).read_bytes())
            if self.ca is not None and not crl.is_signature_valid(self.ca.public_key()):  # type: ignore[arg-type]
                raise ValueError("its signature does not verify against the site CA")
            number = _number_of(crl)
            if number < self._number:
                raise ValueError(
                    f"it is number {number}, older than number {self._number} in force "
                    "(an old copy put back would undo the revocations made since)"
                )
        except (OSError, ValueError) as exc:
            self.error = f"CRL {self.crl_file} refused: {exc}"
            self._stamp = stamp  # not read again until the file changes
            return False
        old, self._serials = self._serials, frozenset(r.serial_number for r in crl)
        self._stamp, self._number = stamp, number
        self._next_update = crl.next_update_utc
        self.error = ""
        return self._serials != old

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials()


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
    "identity_of_dir",
    "init",
    "load_identity_dir",
]
