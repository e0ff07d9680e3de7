"""Where the service is and who calls it, for the client and the CLIs.

Where (``resolve_address``): an explicit address, else ``$WS_SERVICE``, else the local
all-in-one site (``site.json`` in ``$WS_SITE_DIR`` or ``~/.local/share/workspace/site``).
An address may be a comma-separated list of service replicas (``svc1:7070,svc2:7070``):
the channel uses one at a time and fails over (``workspace/failover.py``).

Who (``resolve_tls``): an explicit identity directory (``identity=DIR``, ``ws --identity
DIR``), else ``$WS_IDENTITY``, else the files in ``$WS_TLS_CA``/``_CERT``/``_KEY``,
else -- when the address is a local site's (the default one, or the one whose socket it
is) -- the admin identity that site issued (named in its site.json). Without any, the
channel is plaintext, which only a service started with ``insecure = true`` accepts.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from workspace import errors, rpc, tls_probe, tls_reload
from workspace.config import TlsConfig
from workspace.site import record as site_record

SERVICE_ENV = "WS_SERVICE"
# An identity directory (ws-admin pki issue ... --out DIR) to call the service with.
IDENTITY_ENV = "WS_IDENTITY"
# Optional mutual-TLS material for the client (paths); all empty means plaintext.
TLS_ENV = ("WS_TLS_CA", "WS_TLS_CERT", "WS_TLS_KEY")


class ServiceNotConfigured(errors.Unavailable):
    """No service address was given and no local site exists."""

    expected = True


def older_service(address: str, what: str, also: str = "") -> errors.FailedPrecondition:
    """The service at ``address`` did not do ``what`` as a service of this client's release
    does: it is of an older one (a user who upgraded first: README, "Upgrading a site
    with running VMs"). ``also``: a sentence more."""
    return errors.FailedPrecondition(
        f"the workspace service at {address} {what}: it runs an older release than this "
        'client; upgrade the service (README, "Upgrading a site with running VMs") or use '
        f"a client of its release{'. ' + also if also else ''}"
    )


# How gRPC says a call's stream was torn down under it: the connection had been made and
# the call sent (the service went away during it), not refused.
CUT = "stream removed"
# Text in grpc-core's details when no connection could be made, or the one made broke
# (as opposed to an UNAVAILABLE the service chose to return).
CONNECT_MARKERS = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "no such file",
    "socket closed",
    "dns resolution",
    "errors resolving",
    "broken pipe",
    "goaway",
    "connect failed",
    "permission denied",
)


# grpc-core's wrapping of the reason a connection could not be made: "failed to connect
# to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7070: " before it (a status word
# of its own, UNKNOWN for a refused port, FAILED_PRECONDITION for a missing socket, none
# of them the service's; and the address, named already), and for a unix socket "addr:
# unix:/x.sock error: " within it.
_GRPC_WRAPPING = re.compile(
    r"^(?:failed to connect to all addresses; last error: )?(?:[A-Z_]+: )?"
    r"(?:(?:ipv4|ipv6|unix|unix-abstract):\S*?: )?"
)
_UNIX_ADDR = re.compile(r"addr: \S+ error: ")


def connect_reason(details: str) -> str:
    """What gRPC's ``details`` say of why no connection could be made, without its
    wrapping: "Failed to connect to remote host: Connection refused" of "failed to connect
    to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7070: Failed to connect to
    remote host: Connection refused"."""
    return _UNIX_ADDR.sub("", _GRPC_WRAPPING.sub("", details, count=1)) or details


def no_connection(details: str) -> bool:
    """Whether gRPC's ``details`` of an UNAVAILABLE say that no connection carried the
    call (none could be made, or the one made broke: "Stream removed", with or without
    the socket's error after it), not the service's own words."""
    said = details.lower()
    return CUT in said or any(m in said for m in CONNECT_MARKERS)


class ServiceUnreachable(errors.Unavailable):
    """No connection could be made to the service: ``failures`` holds each address tried
    (one, or each replica of a list) with what gRPC said of it, in the order tried;
    ``hint`` what the client said of it besides (`` (no identity given: ...)``, a
    certificate the service closed the connection on, a local site that is down), as it
    ends the message's first line: for those who tell the failure in other words
    (ws-slurm's DOWN reasons)."""

    def __init__(self, message: str, failures: list[tuple[str, str]], hint: str = "") -> None:
        super().__init__(message)
        self.failures = failures
        self.hint = hint


def resolve_address(service: str | None = None) -> str:
    """The service address: ``service``, else $WS_SERVICE, else the local site."""
    if service:
        return service
    env = os.environ.get(SERVICE_ENV, "").strip()
    if env:
        return env
    site_dir = site_record.default_site_dir()
    record = site_record.read_record(site_dir)
    if record is not None and record.address:
        return record.address
    if (site_dir / site_record.SETUP_FILE).exists():
        raise ServiceNotConfigured(
            f"the local site in {site_dir} is down: `ws-admin site up` starts it again "
            f"(or pass --service ADDR, or set {SERVICE_ENV}=ADDR, for another service)"
        )
    raise ServiceNotConfigured(
        "no workspace service configured: pass --service ADDR (host:port or unix:/path), "
        f"set {SERVICE_ENV}=ADDR, or start a local site with `ws-admin site up` "
        f"(looked for {site_dir / site_record.SITE_FILE})"
    )


def tls_from_env() -> TlsConfig | None:
    """$WS_TLS_CA, $WS_TLS_CERT and $WS_TLS_KEY: all three, or none (ConfigError naming
    those missing: the config loader's "tls: cert_file, key_file not set" named no
    variable the caller had set)."""
    values = {name: os.environ.get(name, "").strip() for name in TLS_ENV}
    given = [name for name, value in values.items() if value]
    if not given:
        return None
    if len(given) < len(TLS_ENV):
        missing = [name for name in TLS_ENV if name not in given]
        raise errors.ConfigError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: set all of "
            f"{', '.join(TLS_ENV)} (CA certificate, certificate, key), or name an identity "
            "directory with --identity DIR or $WS_IDENTITY"
        )
    ca, cert, key = values.values()
    return TlsConfig(ca_file=ca, cert_file=cert, key_file=key)


def identity_tls(identity_dir: str | os.PathLike[str]) -> TlsConfig:
    """The client TlsConfig of an identity directory (ConfigError when it is not one)."""
    d = os.path.expanduser(os.fspath(identity_dir))
    if not os.path.isdir(d):
        raise errors.ConfigError(
            f"identity directory {d} not found; make one with `ws-admin pki issue ... --out DIR`"
        )
    tls = TlsConfig(identity_dir=d)
    files = rpc.tls_files(tls)  # a clear error now for a directory missing one of its files
    try:  # files that cannot make a handshake: the connection would only fail
        tls_reload.load(files.key_file, files.cert_file, files.ca_file)
    except tls_reload.TlsFileError as exc:
        raise errors.ConfigError(
            f"identity directory {d} cannot be used: {exc} (its key.pem, cert.pem and ca.pem "
            "come together from one `ws-admin pki issue ... --out DIR`)"
        ) from None
    _check_dates(d, files.cert_file)
    whose = tls_probe.server_only(files.cert_file)
    if whose:  # the service would only close the connection, which looks like an outage
        raise errors.ConfigError(
            f"identity directory {d} holds {whose}, for a server only (extended key usage "
            "serverAuth): it cannot call the service; use a user's identity (`ws-admin pki "
            "issue user NAME [--admin] --out DIR`)"
        )
    return tls


def _check_dates(identity_dir: str, cert_file: Path) -> None:
    """ConfigError if the identity's certificate has expired or is not valid yet: the
    service's TLS layer would only close the connection, which looks like an outage."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return  # not a certificate: the TLS layer says what is wrong with it
    now = datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        raise errors.ConfigError(
            f"the certificate of identity {identity_dir} expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; ask the site's admin for a new "
            "identity (`ws-admin pki issue`)"
        )
    if now < cert.not_valid_before_utc:
        raise errors.ConfigError(
            f"the certificate of identity {identity_dir} is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)"
        )


def resolve_tls(address: str, identity: str | None = None) -> TlsConfig | None:
    """Who to call ``address`` as: ``identity``, else $WS_IDENTITY, else $WS_TLS_*, else
    the admin identity of the local site at ``address`` (the default site, or the one
    whose unix socket ``address`` is) (None: plaintext)."""
    chosen = identity or os.environ.get(IDENTITY_ENV, "").strip()
    if chosen:
        return identity_tls(chosen)
    env = tls_from_env()
    if env is not None:
        return env
    for _site_dir, record in _local_sites(address):
        if record.identity_dir:
            return identity_tls(record.identity_dir)
    return None


def _local_sites(address: str) -> list[tuple[Path, site_record.SiteRecord]]:
    """The local sites at ``address``: the default one, or the one whose socket it is
    (not one whose record this user may not read: another user's)."""
    dirs = [site_record.default_site_dir()]
    if rpc.is_unix(address):
        dirs.append(Path(address.removeprefix("unix:").removeprefix("//")).parent)
    found = []
    for site_dir in dirs:
        try:
            record = site_record.read_record(site_dir)
        except site_record.SiteUnreadable:
            continue  # another user's site: nothing of it to use, its socket says the rest
        if record is not None and record.address == address:
            found.append((site_dir, record))
    return found


def local_site_hint(address: str) -> str:
    """What to do when ``address`` cannot be reached and it is a local site's ("" if it is
    not): a site whose service stopped without `ws-admin site down` (killed, crashed, the
    machine restarted) keeps its site.json, so its address is still found, and the
    connection error alone did not say that the site is down."""
    for site_dir, _record in _local_sites(address):
        where = "" if site_dir == site_record.default_site_dir() else f" --dir {site_dir}"
        return (
            f"; the local site in {site_dir} does not answer: `ws-admin site status{where}` "
            f"shows which of its processes run, `ws-admin site up{where}` starts the others"
        )
    return ""
