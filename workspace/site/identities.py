"""The local site's PKI: its CA, and the identities of its service, nodes and admin.

``ws-admin site up`` makes the site CA in ``<site>/pki`` once (the default CA
directory of ``ws-admin pki``, so ``ws-admin pki issue user alice --out A`` issues
from it without flags) and keeps it across ``site down``/``site up``; ``site down
--purge`` removes it. Identity directories live in ``<site>/identities/``:

    service        workspace://service/localhost, and the name clients check
                   (``service.workspace.invalid``: see ``workspace.rpc``), and the host
                   ``localhost`` (``OLD_CLIENTS_NAME``), which releases before those
                   names checked on the unix sockets: agents and ``ws`` of the release
                   before keep reaching a service upgraded first
    node-NAME      workspace://node/NAME, one per agent, and the name its peers check
                   (``NAME.node.workspace.invalid``)
    admin-OWNER    workspace://user/OWNER + role admin: the user who ran ``site up``;
                   ``ws`` finds it through the site record (a client's certificate only)

The CA adds the names clients check; nothing else is issued a host (no node nor user is
``localhost``): the sockets are reached by path and checked by those names. An identity
is issued once and reused while its certificate is of this CA, names what it should, may
do what it should (no more: ``pki.extended_key_usage``), is not revoked and is not
within ``RENEW_BEFORE`` of its expiry; otherwise it is issued anew, so ``site up``
replaces one issued before those rules.

The certificate an identity replaces is revoked (by serial, the CRL re-published; its
reason "superseded": its node is not taken for lost, ``ops/liveness.py``) before the
new one is issued, as docs/security.md says a rotation ends. For a node that is what
lets the new certificate register: the service binds a node's name to the certificate it
registered with and refuses another while that one is valid (``ops/reports.py``
``check_bound``). The identity of a daemon that runs is not replaced: it
holds the old certificate until it stops, and its next start renews it (``site up``
passes what runs).
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from workspace import pki
from workspace.config import TlsConfig
from workspace.identity import Identity, Kind, from_pem, tls_name

PKI_DIR = "pki"
IDENTITIES_DIR = "identities"
# The service identity's name (workspace://service/localhost).
SERVICE_HOST = "localhost"
# The host the service's certificate also carries: what agents and clients of releases
# before the server names (identity.tls_name) checked it by on a unix socket. Without it
# the agents still running when the service is upgraded first (README, "Upgrading a site
# with running VMs") were refused by it until each was restarted, their nodes DOWN and
# VMs LOST meanwhile, and users' older `ws` could not reach the site. Only the service
# carries it: a node's or user's certificate cannot pose as the service to them.
OLD_CLIENTS_NAME = "localhost"
# An identity that expires sooner than this is issued anew at `site up`.
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class SiteIdentities:
    """Where the site's CA and identity directories are."""

    ca_dir: Path
    service: Path
    admin: Path
    nodes: dict[str, Path]

    @property
    def crl_file(self) -> Path:
        return self.ca_dir / pki.CRL

    def tls(self, identity_dir: Path) -> TlsConfig:
        return TlsConfig(identity_dir=str(identity_dir), crl_file=str(self.crl_file))


def ca_dir(site_dir: Path) -> Path:
    return site_dir / PKI_DIR


def ensure(
    site_dir: Path,
    owner: str,
    nodes: list[str],
    service_runs: bool = False,
    nodes_running: Collection[str] = (),
) -> SiteIdentities:
    """The site's CA (made if missing) and its identities (issued if missing or stale;
    the replaced certificate revoked). The identities of the daemons that run now (the
    service if ``service_runs``, the agents of ``nodes_running``) are kept as they are."""
    d = ca_dir(site_dir)
    ca = pki.CA(d) if (d / pki.CA_KEY).exists() else pki.init(d, "workspace local site CA")
    ids = site_dir / IDENTITIES_DIR
    ids.mkdir(mode=0o700, exist_ok=True)
    service = ids / "service"
    if not service_runs:
        _ensure_one(ca, Identity(Kind.SERVICE, SERVICE_HOST), service, (OLD_CLIENTS_NAME,))
    admin = _ensure_one(ca, Identity(Kind.USER, owner, admin=True), ids / f"admin-{owner}")
    node_dirs = {name: ids / f"node-{name}" for name in nodes}
    for name, out in node_dirs.items():
        if name not in nodes_running:
            _ensure_one(ca, Identity(Kind.NODE, name), out)
    return SiteIdentities(d, service, admin, node_dirs)


def _ensure_one(ca: pki.CA, who: Identity, out: Path, hosts: tuple[str, ...] = ()) -> Path:
    if not _current(ca, who, out, hosts):
        old = _replaced_serial(ca, out)
        if old:
            # Revoked first: a start that dies before the new one is issued leaves a
            # revoked certificate, which the next start replaces.
            ca.revoke(f"0x{old:x}", superseded=True)
        if out.exists():
            shutil.rmtree(out)
        ca.issue(who, out, hosts)
    return out


def _replaced_serial(ca: pki.CA, out: Path) -> int:
    """The serial of the certificate in ``out`` if this CA issued it and has not revoked
    it (0: none, unreadable, or another CA's: nothing here to revoke)."""
    try:
        serial = pki.identity_of_dir(out).serial
    except Exception:  # missing or unreadable
        return 0
    mine = {r.serial: r for r in ca.issued()}
    return serial if serial in mine and not mine[serial].revoked else 0


def _current(ca: pki.CA, who: Identity, out: Path, hosts: tuple[str, ...]) -> bool:
    """Whether ``out`` holds a usable identity ``who`` of ``ca``, issued ``hosts``."""
    try:
        ca_file, cert_file, _key_file = pki.load_identity_dir(out)
        pem = cert_file.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        held = from_pem(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except Exception:  # missing, unreadable or foreign: issue anew
        return False
    revoked = {r.serial for r in ca.issued() if r.revoked}
    expected_dns = [tls_name(who.kind, who.name)] if tls_name(who.kind, who.name) else []
    expected_dns += hosts
    return (
        cert.issuer == ca.cert.subject
        and ca_file.read_bytes() == (ca.dir / pki.CA_CERT).read_bytes()
        and cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + RENEW_BEFORE
        and (held.kind, held.name, held.admin) == (who.kind, who.name, who.admin)
        and held.serial not in revoked
        # issued before the names and usages of today: a service without the name its
        # clients check, a user allowed to serve, a node with `localhost` ...
        and san.get_values_for_type(x509.DNSName) == expected_dns
        and not san.get_values_for_type(x509.IPAddress)
        and set(usage) == set(pki.extended_key_usage(who.kind))
    )
