"""Whether the service refused our certificate, when gRPC says only that the connection
closed.

A gRPC server that does not take a client's certificate (of a CA it does not trust: an
identity of another site, or of the site's CA before it was made anew) sends no TLS
alert: it closes the connection. Over TLS 1.3 the client has finished its side of the
handshake by then, so gRPC reports "Socket closed" or "Connection reset by peer",
UNAVAILABLE, like a service that is down. ``refused_certificate`` asks again, once, on
its own: a TLS 1.2 handshake (the server's verdict on the client's certificate then comes
within the handshake), the server checked as the channel checks it (our ca.pem, the
service's name), presenting our certificate. A server that then closes the connection in
the handshake refused the certificate; the answer says so, and why: a certificate of
another CA (which CA issued it), or one for servers only (the service's own identity,
used to call: its extended key usage is serverAuth alone).
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from workspace import identity, rpc
from workspace.config import TlsConfig
from workspace.errors import ConfigError, WorkspaceError
from workspace.identity import SERVICE_TLS_NAME, Kind

# What gRPC says of a connection the server closed (a refused certificate among others).
CLOSED_MARKERS = ("socket closed", "connection reset", "broken pipe")


def refused_by_any(failures: Sequence[tuple[str, str]], tls: TlsConfig) -> str:
    """``refused_certificate`` of the first address of ``failures`` (each address tried,
    with what gRPC said of it) whose connection was closed ("" when none was). With a
    list of replicas whose first one is down, the probe went to that one, which does not
    answer, and a certificate the others closed the connection on was not said."""
    for address, said in failures:
        if any(m in said.lower() for m in CLOSED_MARKERS):
            return refused_certificate(address, tls)
    return ""


def refused_certificate(address: str, tls: TlsConfig, timeout_s: float = 3.0) -> str:
    """Why the service at ``address`` (one address) closed the connection, when it closed
    it in the TLS handshake after our certificate, for the end of the message ("" when
    it did not, or that cannot be told)."""
    try:
        files = rpc.tls_files(tls)
        ctx = ssl.create_default_context(cafile=str(files.ca_file))
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    except (ConfigError, OSError, ssl.SSLError):
        return ""
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    try:
        sock = _connect(address, timeout_s)
    except (OSError, ValueError):
        return ""
    with sock:
        try:
            ctx.wrap_socket(sock, server_hostname=SERVICE_TLS_NAME).close()
            return ""  # the certificate was taken: something else closed the connection
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            pass
        except (OSError, ssl.SSLError):  # the server refused, or this side, for another reason
            return ""
    whose = server_only(files.cert_file)
    if whose:
        return (
            " (the service closed the connection in the TLS handshake, after this identity's "
            f"certificate: it is {whose}, for a server only (extended key usage "
            "serverAuth), and no server's certificate may call the service; a caller needs "
            "a user's identity (`ws-admin pki issue user NAME [--admin] --out DIR`), an "
            "agent its node's)"
        )
    return (
        " (the service closed the connection in the TLS handshake, after this identity's "
        f"certificate{_why(files.cert_file, files.ca_file)})"
    )


def _why(cert_file: Path, ca_file: Path) -> str:
    """Why the service does not take the certificate, for the end of the message: it is
    out of its dates (expired: certificates are issued for a year), else it is of a CA
    the service does not trust. An expired one was said to be of another CA, sending its
    holder after another site or a CA made anew."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        cert = None
    now = datetime.datetime.now(datetime.UTC)
    if cert is not None and cert.not_valid_after_utc < now:
        return (
            f", which expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: ask the site's "
            "admin for a new one (`ws-admin pki issue`)"
        )
    if cert is not None and cert.not_valid_before_utc > now:
        return (
            f", which is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: this "
            "host's clock is behind"
        )
    return (
        f"{_issuers(cert_file, ca_file)}: it does not take it, being of a CA the service "
        "does not trust: the identity is another site's, or its CA was made anew since it "
        "was issued (`ws-admin site down --purge`); ask the site's admin for one of the "
        "site's CA (`ws-admin pki issue`)"
    )


def _connect(address: str, timeout_s: float) -> socket.socket:
    if rpc.is_unix(address):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(rpc.unix_path(address)))
        except OSError:
            sock.close()
            raise
        return sock
    host, _, port = address.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout_s)


def server_only(cert_file: Path) -> str:
    """Whose certificate ``cert_file`` is ("the service's (service:HOST)"), when its
    extended key usage allows a server's use but not a client's: the service's own
    identity (workspace/pki.py ``extended_key_usage``), which the service's TLS layer
    refuses from a caller ("unsupported certificate purpose", sent as no alert). "" when
    it may be a client's, or the file cannot say."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return ""
    if ExtendedKeyUsageOID.CLIENT_AUTH in usage or ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        return ""
    try:
        who = identity.from_certificate(cert)
    except WorkspaceError:
        return "a server's certificate"
    if who.kind is Kind.SERVICE:
        return f"the service's own certificate ({who.principal})"
    return f"a server's certificate ({who.principal})"


def _issuers(cert_file: Path, ca_file: Path) -> str:
    """ ", issued by CN=…, its ca.pem holding CN=…" when the certificate is not of a CA
    of the identity's own ca.pem ("" when it is, or the files cannot say)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        cas = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError):
        return ""
    for ca in cas:
        with contextlib.suppress(ValueError, TypeError, InvalidSignature):
            cert.verify_directly_issued_by(ca)
            return ""
    issuer = cert.issuer.rfc4514_string()
    held = [ca.subject.rfc4514_string() for ca in cas]
    if issuer in held:
        return f", issued by another CA named {issuer} than the one its ca.pem holds"
    return f", issued by {issuer} (its ca.pem holds {'; '.join(held)})"
