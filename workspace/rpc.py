"""Every gRPC channel and server is built here, from config.

Addresses are "host:port" (TCP) or "unix:/path" (a unix socket). Credentials come
from a TlsConfig: when it is set, both sides use mutual TLS with the site CA; no call
site changes. A TlsConfig names either an identity directory (``identity_dir``:
ca.pem, cert.pem, key.pem, as ``ws-admin pki issue`` writes it) or the three files.

Plaintext is for development and tests only: ``check_listen`` refuses it unless the
config says ``insecure = true``; on an address other than loopback or a unix socket the
daemon then says at every start, at ERROR, that anyone who reaches it is the admin.

With TLS a client checks *who* the server is, not only that the site CA signed its
certificate: ``channel`` expects the service (or, for a peer, the node it names), and
sets gRPC's target name to the DNS name only such a certificate carries
(``identity.tls_name``: ``service.workspace.invalid``, ``NODE.node.workspace.invalid``),
on TCP and unix sockets alike. A node or user certificate of the same CA is refused in
the handshake, before anything is sent; the address dialled need not be in the
certificate (the CA is the site's own: what the server is matters, not where).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from workspace import failover, identity, ports, tls_reload
from workspace.config import TlsConfig
from workspace.errors import ConfigError
from workspace.rpc_decode import DecodeRequests
from workspace.rpc_limit import ConcurrencyLimit, CountingPool, Refused

log = logging.getLogger("workspace.rpc")

# Generous message size: console tails and blob chunks.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The key of the peer's certificate (PEM) in a call's auth context.
PEER_CERT_KEY = "x509_pem_cert"
# A unix socket a daemon serves on: its owner's alone (``listen_on``).
UNIX_SOCKET_MODE = 0o600
# A peer that stopped (hung, SIGSTOP: its kernel keeps the TCP connection up) is found
# by keepalive: a ping every KEEPALIVE_MS, the connection dropped when its answer does not
# come within PING_TIMEOUT_MS -- UNAVAILABLE "ping timeout" for every call and stream on
# it, which then move to the next replica of a list. gRPC core waits
# ``grpc.http2.ping_timeout_ms`` (default one minute), not ``keepalive_timeout_ms``, for
# that answer, so both are set: measured, a stream on a stopped server breaks after
# 64 s with the old settings (20 s + 10 s keepalive), after KEEPALIVE + PING_TIMEOUT
# with these.
KEEPALIVE_MS = 5_000
PING_TIMEOUT_MS = 10_000
# A new connection whose server never answers the HTTP/2 handshake (it accepted the TCP
# connection but is stopped) fails after this, not gRPC's default 20 s: a call on it is
# UNAVAILABLE "failed to connect", never sent, so a list of replicas goes to the next.
CONNECT_TIMEOUT_MS = 5_000
# A channel whose server is away tries again after a backoff that grows by 1.6 a try; gRPC
# lets it grow to two minutes, so a `ws watch` or `ws-admin events --follow` kept open
# through a long outage (a database upgrade, a host reboot) saw the service back up to
# two minutes late (measured: 1.5 min after an outage of 2.5 min). At most this instead:
# a client knocks every 10 s at worst while the service is away.
MAX_RECONNECT_BACKOFF_MS = 10_000
_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]
_SERVER_OPTIONS = [
    *_OPTIONS,
    # Pings from a client are accepted this often (below its KEEPALIVE_MS, so this
    # service never answers its clients' keepalive with GOAWAY "too_many_pings").
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS - 1_000),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class TlsFiles:
    """The three files of one side of mutual TLS."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def named_tls_files(tls: TlsConfig) -> tuple[str, str, str]:
    """The (CA, certificate, key) paths ``tls`` names, from ``identity_dir`` for the ones
    it does not name itself ("" for one named nowhere); not checked to exist."""
    ca, cert, key = tls.ca_file, tls.cert_file, tls.key_file
    if tls.identity_dir:
        d = Path(tls.identity_dir).expanduser()
        ca, cert, key = (
            ca or str(d / "ca.pem"),
            cert or str(d / "cert.pem"),
            key or str(d / "key.pem"),
        )
    return ca, cert, key


def tls_files(tls: TlsConfig) -> TlsFiles:
    """The CA, certificate and key files ``tls`` names (from ``identity_dir`` for the
    ones it does not name itself); ConfigError naming what is missing."""
    ca, cert, key = named_tls_files(tls)
    named = {"ca_file": ca, "cert_file": cert, "key_file": key}
    unnamed = [k for k, v in named.items() if not v]
    if unnamed:
        raise ConfigError(
            f"tls: {', '.join(unnamed)} not set (give identity_dir, or all of "
            "ca_file, cert_file and key_file)"
        )
    where = f" (identity_dir {tls.identity_dir})" if tls.identity_dir else ""
    missing = []
    for v in named.values():
        try:
            if not Path(v).expanduser().is_file():
                missing.append(v)
        except OSError as exc:  # EACCES: a directory this user may not search
            raise ConfigError(f"tls: cannot read {v}: {exc.strerror or exc}{where}") from exc
    if missing:
        raise ConfigError(
            f"tls: {', '.join(missing)} not found{where}; "
            "make an identity directory with `ws-admin pki issue`"
        )
    return TlsFiles(Path(ca).expanduser(), Path(cert).expanduser(), Path(key).expanduser())


def channel(address: str, tls: TlsConfig | None = None, node: str = "") -> grpc.Channel:
    """A client channel to ``address`` with the credentials ``tls`` describes; to a
    comma-separated list of addresses (replicas), one that fails over (failover.py).

    With TLS the server must prove it is the service (``node``: that node's peer server)
    by the name its certificate carries; any other server of the site CA fails the
    handshake (UNAVAILABLE), and no request reaches it."""
    if "," in address:
        addresses = failover.split(address)
        if len(addresses) > 1:
            return failover.FailoverChannel(addresses, [channel(a, tls, node) for a in addresses])
        address = addresses[0] if addresses else address
    if tls is not None and tls.enabled:
        options: list[tuple[str, Any]] = [
            *_OPTIONS,
            ("grpc.ssl_target_name_override", expected_name(node)),
        ]

        def make(m: tls_reload.TlsMaterial) -> grpc.Channel:
            creds = grpc.ssl_channel_credentials(
                root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert
            )
            return grpc.secure_channel(address, creds, options=options)

        # A re-issued client certificate is used for the calls that follow (tls_reload).
        return tls_reload.ReloadingChannel(watch(tls, strict=False), make)
    return grpc.insecure_channel(address, options=_OPTIONS)


def watch(tls: TlsConfig, strict: bool) -> tls_reload.TlsWatch:
    """A watch of the files ``tls`` names; ConfigError when they are missing, cannot be
    read, or (``strict``) cannot be used, naming the file."""
    files = tls_files(tls)
    try:
        return tls_reload.TlsWatch(files.key_file, files.cert_file, files.ca_file, strict)
    except tls_reload.TlsFileError as exc:
        raise ConfigError(f"tls: {exc}") from None


def expected_name(node: str = "") -> str:
    """The DNS name a server's certificate must carry: the service's, or node ``node``'s."""
    if node:
        return identity.tls_name(identity.Kind.NODE, identity.check_name(identity.Kind.NODE, node))
    return identity.SERVICE_TLS_NAME


def server(
    max_workers: int = 64,
    maximum_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    thread_name_prefix: str = "rpc",
    on_refused: Refused | None = None,
) -> grpc.Server:
    """A server with its own pool of ``max_workers`` threads; calls beyond
    ``maximum_concurrent_rpcs`` (running or queued) are refused with RESOURCE_EXHAUSTED,
    each told to ``on_refused`` (service, method) (rpc_limit.py: grpcio's own limit
    refused them unseen). A request that is not a valid message is refused with
    INVALID_ARGUMENT (rpc_decode.py)."""
    pool = CountingPool(max_workers, thread_name_prefix)
    limit = (
        [ConcurrencyLimit(pool, maximum_concurrent_rpcs, on_refused)]
        if maximum_concurrent_rpcs is not None
        else []
    )
    return grpc.server(
        pool,
        options=_SERVER_OPTIONS,
        interceptors=[*limit, *interceptors, DecodeRequests()],
    )


def bind(srv: grpc.Server, address: str, tls: TlsConfig | None = None) -> int:
    """Bind ``srv`` to ``address``; returns the port (0 for unix sockets).

    With ``tls`` the server presents its certificate and requires every client to
    present one signed by the same CA (mutual TLS). The files are read again when they
    change: each new connection gets the certificate and CA bundle on disk then
    (tls_reload.py; connections already open keep theirs)."""
    if tls is not None and tls.enabled:
        return srv.add_secure_port(address, tls_reload.server_credentials(watch(tls, strict=True)))
    return srv.add_insecure_port(address)


def listen_on(srv: grpc.Server, address: str, tls: TlsConfig | None, key: str) -> int:
    """Bind ``srv`` to ``address``, the value of the config key ``key`` (``listen``,
    ``node_listen``, ``peer_listen``); returns the port (0 for a unix socket).

    A unix socket left by a process that was killed is replaced; one a live process
    listens on, or a path that is not a socket, is refused (never removed). A unix
    socket is its owner's alone (0600) from the moment it exists, whatever the umask:
    connecting needs write permission on it, and without TLS every caller is the admin.
    gRPC binds and listens when the port is added, so a socket made as the umask said
    and chmod-ed after took connections in that window (queued, then served), hence the
    umask for the bind itself. What cannot be bound is a ConfigError naming ``key``,
    the address and why; a TCP port in use is found before gRPC is asked (``check_free``),
    so gRPC's own error line is not printed before ours."""
    check_free(address, key)
    # The umask is the process's: set only for the bind (the daemons add their ports
    # at start, before their own threads make files), and put back at once.
    umask = os.umask(0o777 & ~UNIX_SOCKET_MODE) if is_unix(address) else None
    try:
        port = bind(srv, address, tls)
    except RuntimeError:  # gRPC's "Failed to bind to address ...": say why, in one line
        raise ConfigError(f"{key}: cannot bind {address}: {_why_not_bound(address)}") from None
    finally:
        if umask is not None:
            os.umask(umask)
    if port == 0 and not is_unix(address):
        raise ConfigError(f"{key}: cannot bind {address}: {_why_not_bound(address)}")
    if is_unix(address):
        os.chmod(unix_path(address), UNIX_SOCKET_MODE)
    return port


def check_free(address: str, key: str) -> None:
    """ConfigError unless ``address``, the value of the config key ``key``, can be
    listened on now: host:port or unix:/path, not in use by another process (the
    daemons ask it before they make their store or state, and ``listen_on`` again just
    before it binds). A unix socket a killed process left is removed (``listen_on``)."""
    if is_unix(address):
        if why := too_long(unix_path(address)):
            raise ConfigError(f"{key}: {why}")
        _clear_unix_path(unix_path(address), key)
        return
    host, sep, digits = address.rpartition(":")
    if not sep or not digits.isdigit() or int(digits) > 65535:
        raise ConfigError(f"{key}: cannot bind {address}: not host:port nor unix:/path")
    if why := ports.why_not_bindable(host.strip("[]"), int(digits)):
        raise ConfigError(f"{key}: cannot bind {address}: {why}")


def unix_path(address: str) -> Path:
    """The file of a ``unix:/path`` (or ``unix:///path``) address."""
    return Path(address.removeprefix("unix:").removeprefix("//"))


def too_long(path: Path) -> str:
    """Why no socket can have ``path`` (longer than a socket's address holds: gRPC said
    "Failed to create channel ... the target uri is not valid", code UNKNOWN, to a client,
    and "Path name should not have more than 107 characters" above a daemon's error), or
    "" when one can."""
    size = len(os.fsencode(path))
    if size <= ports.UNIX_PATH_MAX:
        return ""
    return (
        f"the unix socket path {path} is {size} bytes, over the {ports.UNIX_PATH_MAX} a "
        "socket's address holds: give it a shorter path (a shorter symlink to its "
        "directory will do)"
    )


def _clear_unix_path(path: Path, key: str) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:  # a parent that is a file, or not ours to search
        raise ConfigError(f"{key}: cannot bind unix:{path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{key}: {path} is not a socket (left as it is); name another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            path.unlink(missing_ok=True)  # nobody listens: left by a process that was killed
        except OSError as exc:
            raise ConfigError(
                f"{key}: cannot remove {path}, a socket nobody listens on: {exc.strerror}"
            ) from None
        return
    except OSError as exc:
        reason = exc.strerror or "no answer"
        raise ConfigError(f"{key}: {path} is in use by another process ({reason})") from None
    finally:
        probe.close()
    raise ConfigError(
        f"{key}: {path} is in use by another process (is a workspace-service or "
        "workspace-agent running there already?)"
    )


def _why_not_bound(address: str) -> str:
    """Why ``address`` cannot be bound, as the system says it (tried with a socket of
    our own, closed at once)."""
    if is_unix(address):
        parent = unix_path(address).parent
        return "cannot create the socket there" if parent.is_dir() else f"no directory {parent}"
    host, _, port = address.rpartition(":")
    if why := ports.why_not_bindable(host.strip("[]"), int(port)):
        return why
    return "gRPC could not bind it"


def is_unix(address: str) -> bool:
    return address.startswith("unix:")


def is_loopback(address: str) -> bool:
    """True for a unix socket or a TCP address on a loopback interface (for a list of
    addresses: every one)."""
    if "," in address:
        return all(is_loopback(a) for a in failover.split(address))
    if is_unix(address):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(address: str, tls: TlsConfig | None, insecure: bool, what: str = "listen") -> bool:
    """Whether ``address`` may be served (or dialled) as configured; True when plaintext.

    With TLS anything goes (the files, and the CRL if one is named, are checked here,
    so a missing one is a clear error at start rather than at the first call).
    Without TLS: ConfigError unless ``insecure`` is set. The caller logs
    ``insecure_warning(...)`` when this returns True (at ERROR off loopback).
    """
    if tls is not None and tls.enabled:
        tls_files(tls)
        if tls.crl_file and not Path(tls.crl_file).expanduser().is_file():
            raise ConfigError(
                f"tls.crl_file {tls.crl_file} not found; copy the site CA's crl.pem there "
                "(`ws-admin pki init` makes it, `ws-admin pki revoke` re-signs it)"
            )
        return False
    if not insecure:
        raise ConfigError(
            f"{what} {address}: no TLS configured; set [tls] identity_dir (an identity "
            "directory from `ws-admin pki issue`), or insecure = true for a development "
            "setup (plaintext, every caller the admin)"
        )
    return True


def insecure_warning(process: str, address: str) -> tuple[int, str]:
    """The log level and line a daemon running without TLS starts with: a WARNING on
    loopback or a unix socket, an ERROR on any other address."""
    said = (
        f"INSECURE: {process} runs WITHOUT TLS on {address} (insecure = true): no caller "
        "is authenticated; use this only for development and tests"
    )
    if is_loopback(address):
        return logging.WARNING, said
    return logging.ERROR, (
        f"{said}. {address} is not loopback: ANYONE WHO CAN REACH IT ACTS AS THE SITE "
        "ADMIN (and as any node); configure [tls] for any network a stranger can reach"
    )


def peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The PEM certificate the caller presented (None without TLS or without one)."""
    values = context.auth_context().get(PEER_CERT_KEY) or []
    return bytes(values[0]) if values else None
