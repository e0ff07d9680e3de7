"""Peer grants: the service's signed word that a node may fetch a blob from a peer.

Peers (agent/peers.py) serve cached blobs to other agents. A digest is no secret
(ops/blob_access.py), so "a node asks for it" must not be enough: the service lets a
node fetch only the blobs of its own orders and prefetch list (``reports.may_fetch``),
and a peer must hold to the same rule without asking the service (peer fetch exists so
that the service is not asked). So the service signs, with the key of its TLS
certificate, a grant per blob it names peers for in a node's orders, over::

    workspace peer grant v1 \\n NODE \\n DIGEST \\n EXPIRES_AT

and sends the grants with the orders (one certificate and expiry per AssignmentSet).
The agent sends a blob's grant with each Peers.FetchBlob of it; the peer serves only if
the grant names the calling node (its TLS identity) and the digest asked for, has not
expired, and is signed by the key of a certificate that the site CA issued directly,
that carries a service identity (``workspace://service/HOST``) and that the CRL does
not revoke. Any replica's certificate will do: each signs with its own.

Grants live ``LIFETIME_S`` (hours: a peer's clock may be ahead of the service's by that
much less the age of the set) and the service sends a node's orders again with fresh
grants once its grants are ``REFRESH_S`` old, even when nothing else changed. A grant
outlives the order that gave it by at most ``LIFETIME_S``: it only ever names a node
the service did allow that blob.

Without TLS there are no identities, so no grants: nothing is signed and a peer checks
nothing (a site without TLS trusts its network).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from workspace import identity, tls_reload
from workspace.domain.model import Grant, PeerGrants
from workspace.errors import PermissionDenied

log = logging.getLogger("workspace.grants")

LIFETIME_S = 4 * 3600
# Orders are sent again with fresh grants when theirs are this old.
REFRESH_S = 3600
# At most this many grants in one node's orders (~150 bytes each: the orders must fit in
# one message, ops/order_size.py); blobs past it are fetched from the service.
MAX_GRANTS = 4096
_CONTEXT = b"workspace peer grant v1"


def message(node: str, digest: str, expires_at: int) -> bytes:
    """The bytes a grant signs (node and digest names never hold a newline)."""
    return b"\n".join([_CONTEXT, node.encode(), digest.encode(), str(expires_at).encode()])


def _sign(key: object, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise ValueError(f"cannot sign peer grants with a {type(key).__name__}")


def _verify(key: object, signature: bytes, data: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise InvalidSignature(f"a {type(key).__name__} cannot sign peer grants")


class Signer:
    """The service's side: signs grants with its TLS key (``cert_file``, ``key_file``).

    The pair is read at start and again whenever either file changes (a certificate
    rotation: a stat of both at each ``refresh``, as the CRL is watched), so grants are
    signed with the certificate on disk, not with one that may be expired or revoked by
    now. A new pair that cannot be used yet (the certificate written but not its key,
    a certificate that is not a service's) is said at WARNING and the one read before
    goes on signing until the files are right."""

    def __init__(
        self, cert_file: str | Path, key_file: str | Path, clock: Callable[[], float] = time.time
    ) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.clock = clock
        self._lock = threading.Lock()
        self._seen = self._stat()
        self._refused: object = None  # the files' stat when a pair read from them failed
        self.certificate, self.key = _load_pair(self.cert_file, self.key_file)
        # Moves each time another pair is read: orders sent with grants of an older one
        # are sent again (edge/nodes.py).
        self.generation = 0

    def _stat(self) -> tuple[tuple[int, int, int, int], ...] | None:
        try:
            stats = [self.cert_file.stat(), self.key_file.stat()]
        except OSError:  # a rotation renaming one of them: the next look
            return None
        return tuple((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats)

    def refresh(self) -> int:
        """Read the pair again if either file changed since; returns ``generation``."""
        seen = self._stat()
        with self._lock:
            if seen is None or seen == self._seen or seen == self._refused:
                return self.generation
            try:
                certificate, key = _load_pair(self.cert_file, self.key_file)
            except (OSError, ValueError, PermissionDenied) as exc:
                self._refused = seen
                why = exc.message if isinstance(exc, PermissionDenied) else str(exc)
                log.warning(
                    "peer grants: %s or %s changed but cannot be used (%s); still signing "
                    "with the certificate read before",
                    self.cert_file,
                    self.key_file,
                    why,
                )
                return self.generation
            self._seen, self.certificate, self.key = seen, certificate, key
            self.generation += 1
            log.info("peer grants: signing with the new certificate in %s", self.cert_file)
            return self.generation

    def grants(self, node: str, digests: Iterable[str]) -> PeerGrants:
        """Grants of ``digests`` (the first ``MAX_GRANTS``) to ``node``."""
        self.refresh()
        with self._lock:
            certificate, key = self.certificate, self.key
        expires_at = int(self.clock()) + LIFETIME_S
        return PeerGrants(
            certificate,
            expires_at,
            tuple(
                (d, _sign(key, message(node, d, expires_at)))
                for d in list(dict.fromkeys(d for d in digests if d))[:MAX_GRANTS]
            ),
        )


def _load_pair(cert_file: Path, key_file: Path) -> tuple[bytes, object]:
    """A service's certificate (DER) and the private key that goes with it; raises
    PermissionDenied (not a service's), ValueError (unreadable, not a pair, cannot sign)
    or OSError."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    who = identity.from_certificate(cert)
    if who.kind is not identity.Kind.SERVICE:
        raise PermissionDenied(f"{cert_file} is {who.principal}'s, not a service's")
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"cannot sign peer grants with a {type(key).__name__}")
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        raise ValueError(f"{key_file} is not the key of the certificate in {cert_file}")
    _sign(key, b"")  # a key that cannot sign fails here
    return cert.public_bytes(serialization.Encoding.DER), key


class Verifier:
    """A peer's side: whether a grant lets node NODE fetch DIGEST (``problem``)."""

    def __init__(
        self,
        ca_file: str | Path,
        is_revoked: Callable[[int, bytes], bool] = lambda _serial, _authority: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Every CA of the bundle (the old and the new one during a CA rotation), read
        # again when the file changes.
        self.cas = tls_reload.CaBundle(ca_file)
        self.is_revoked = is_revoked
        self.clock = clock

    def problem(self, grant: Grant | None, node: str, digest: str) -> str:
        """Why ``grant`` does not let ``node`` fetch ``digest`` ("": it does)."""
        if grant is None or not grant.signature:
            return (
                f"node {node} shows no grant from the service for {digest} (the service "
                "grants a node the blobs of its orders; an agent or service older than "
                "peer grants sends none)"
            )
        now = self.clock()
        if grant.expires_at <= now:
            at = datetime.datetime.fromtimestamp(grant.expires_at, datetime.UTC)
            return f"node {node}'s grant for {digest} expired at {at:%Y-%m-%d %H:%M:%S} UTC"
        try:
            cert = x509.load_der_x509_certificate(grant.certificate)
        except ValueError:
            return f"node {node}'s grant for {digest} carries no readable certificate"
        signer = self._signer(cert, now)
        if signer:
            return f"node {node}'s grant for {digest} is not the service's: {signer}"
        try:
            _verify(cert.public_key(), grant.signature, message(node, digest, grant.expires_at))
        except InvalidSignature:
            return (
                f"the grant shown by node {node} does not grant it {digest} (a grant for "
                "another node or blob, or altered)"
            )
        return ""

    def _signer(self, cert: x509.Certificate, now: float) -> str:
        """What is wrong with ``cert`` as a grant's signer ("": nothing)."""
        if not any(_issued_by(cert, ca) for ca in self.cas.certs()):
            return "its certificate is not issued by the site CA"
        try:
            who = identity.from_certificate(cert)
        except PermissionDenied as exc:
            return exc.message
        if who.kind is not identity.Kind.SERVICE:
            return f"it is signed by {who.principal}"
        when = datetime.datetime.fromtimestamp(now, datetime.UTC)
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            return f"the certificate of {who.principal} is not valid now"
        if self.is_revoked(cert.serial_number, identity.authority_key_id(cert)):
            return f"the certificate of {who.principal} (serial {cert.serial_number:#x}) is revoked"
        return ""


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
