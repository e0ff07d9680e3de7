"""Who is calling: identities carried in certificates of the site's CA.

An identity is named explicitly in the certificate's subjectAltName as URIs, never
guessed from the common name:

    workspace://user/alice        a user (exactly one of user/node/service per certificate)
    workspace://node/n1           a node agent, acting only for node n1
    workspace://service/HOST      the service (the certificate the service presents)
    workspace://role/admin        on a user certificate: the user is a site admin
    workspace://project/physics   on a user certificate: a project the user belongs to

A certificate without exactly one kind URI is refused. This module knows no gRPC; the
edges read the peer certificate and call ``from_certificate``.

A server is checked by name as well (``tls_name``): every service certificate carries
the DNS name ``service.workspace.invalid`` and every node certificate
``NODE.node.workspace.invalid``; clients expect that name in the server's certificate
(``workspace.rpc.channel``), whatever address they dialled. Names under ``.invalid``
(reserved by RFC 2606 and 6761: they never resolve) are added by the CA alone, which
refuses them as hosts (``reserved_host``), so no other certificate can carry them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field

from cryptography import x509

from workspace.errors import PermissionDenied

SCHEME = "workspace"
ADMIN_ROLE = "admin"
# Names in identities: users, nodes, projects (a node name is also a DNS label).
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
# The TLD of the names that say what a server is (RFC 6761: never resolves).
RESERVED_TLD = "invalid"
# The DNS subjectAltName every service certificate carries, and only those.
SERVICE_TLS_NAME = "service.workspace.invalid"
# NODE + this: the DNS subjectAltName of node NODE's certificate (its peer server).
NODE_TLS_SUFFIX = ".node.workspace.invalid"
# How far before its issue the CA (workspace/pki.py) dates a certificate's notBefore,
# so that a party whose clock is a little behind the CA's accepts it at once; the
# issue time is notBefore + this (``Identity.issued_at``).
BACKDATE_S = 300


class Kind(enum.StrEnum):
    USER = "user"
    NODE = "node"
    SERVICE = "service"


@dataclass(frozen=True)
class Identity:
    kind: Kind
    name: str
    admin: bool = False
    projects: tuple[str, ...] = ()
    serial: int = 0  # the certificate's serial number (0: not from a certificate)
    # When the CA issued the certificate (epoch seconds, whole: notBefore + BACKDATE_S;
    # 0: not from a certificate). A project it names that was deleted after this is
    # not the one it named (ops/projects.py ``outdated``).
    issued_at: float = 0.0
    # Which CA key signed the certificate (its authority key identifier; b"": not said):
    # during a CA rotation a certificate is checked against its own CA's CRL. Not part
    # of what the identity is (the serial already tells certificates apart).
    authority: bytes = field(default=b"", compare=False)

    @property
    def principal(self) -> str:
        """``user:alice``, ``node:n1``, ``service:HOST``: how logs and audits name it."""
        return f"{self.kind.value}:{self.name}"

    @property
    def is_user(self) -> bool:
        return self.kind is Kind.USER

    @property
    def is_node(self) -> bool:
        return self.kind is Kind.NODE

    def uris(self) -> list[str]:
        """The subjectAltName URIs that carry this identity."""
        out = [f"{SCHEME}://{self.kind.value}/{self.name}"]
        if self.admin:
            out.append(f"{SCHEME}://role/{ADMIN_ROLE}")
        out += [f"{SCHEME}://project/{p}" for p in self.projects]
        return out


def tls_name(kind: Kind | str, name: str = "") -> str:
    """The DNS name a server of this identity proves it is by its certificate:
    ``service.workspace.invalid`` for the service, ``NAME.node.workspace.invalid`` for
    node NAME, "" for a user (users never serve)."""
    kind = Kind(kind)
    if kind is Kind.SERVICE:
        return SERVICE_TLS_NAME
    if kind is Kind.NODE:
        return f"{name}{NODE_TLS_SUFFIX}"
    return ""


def reserved_host(host: str) -> bool:
    """Whether ``host`` is a name only the CA may put in a certificate (under .invalid)."""
    return host.rstrip(".").lower().rsplit(".", 1)[-1] == RESERVED_TLD


def name_problem(kind: Kind | str, name: str, what: str = "") -> str:
    """What is wrong with ``name`` as the name of an identity of ``kind`` ("": nothing);
    ``what`` calls it something else in the message (a project's name follows a user's
    rule)."""
    pattern = HOST_RE if Kind(kind) is Kind.SERVICE else NAME_RE
    if pattern.fullmatch(name):
        return ""
    return (
        f"{name!r} is not a valid {what or Kind(kind).value} name "
        "(1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
    )


def check_name(kind: Kind | str, name: str) -> str:
    """``name`` unchanged if it may name an identity of ``kind``, else PermissionDenied
    (a certificate presented with such a name is refused)."""
    problem = name_problem(kind, name)
    if problem:
        raise PermissionDenied(problem)
    return name


def from_uris(uris: list[str], serial: int = 0, issued_at: float = 0.0) -> Identity:
    """The identity named by these subjectAltName URIs (PermissionDenied if none or several)."""
    kinds: list[tuple[Kind, str]] = []
    admin = False
    projects: list[str] = []
    prefix = f"{SCHEME}://"
    for uri in uris:
        if not uri.startswith(prefix):
            continue
        what, _, name = uri[len(prefix) :].partition("/")
        if what in Kind.__members__.values():
            kinds.append((Kind(what), check_name(what, name)))
        elif what == "role" and name == ADMIN_ROLE:
            admin = True
        elif what == "project":
            projects.append(check_name(Kind.USER, name))
    if len(kinds) != 1:
        raise PermissionDenied(
            "the certificate names no workspace identity"
            if not kinds
            else "the certificate names more than one workspace identity"
        )
    kind, name = kinds[0]
    if kind is not Kind.USER and (admin or projects):
        raise PermissionDenied(f"a {kind.value} certificate carries roles or projects")
    return Identity(kind, name, admin, tuple(sorted(set(projects))), serial, issued_at)


def from_certificate(cert: x509.Certificate) -> Identity:
    """The identity a certificate carries in its subjectAltName URIs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PermissionDenied("the certificate names no workspace identity") from exc
    issued_at = cert.not_valid_before_utc.timestamp() + BACKDATE_S
    found = from_uris(
        san.get_values_for_type(x509.UniformResourceIdentifier), cert.serial_number, issued_at
    )
    return dataclasses.replace(found, authority=authority_key_id(cert))


def authority_key_id(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """The key identifier of the CA key that signed ``cert`` (a certificate or a CRL), as
    its authority key identifier says (b"": it says none)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return b""
    return aki.key_identifier or b""


def key_id(ca: x509.Certificate) -> bytes:
    """A CA certificate's key identifier (what the certificates it signs name as their
    authority key identifier)."""
    try:
        return ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest


def from_pem(pem: bytes) -> Identity:
    return from_certificate(x509.load_pem_x509_certificate(pem))
