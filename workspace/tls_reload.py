"""TLS files read again when they change: certificate rotation without a restart.

A site admin re-issues a certificate before it expires (``ws-admin pki issue``) and puts
the new files where ``[tls]`` names them (docs/design/server-identity.md, "Rotation
without restarts"). Every TLS server (``rpc.bind``: the service's ``listen`` and
``node_listen``, an agent's ``peer_listen``) and every TLS channel (``rpc.channel``:
clients, agents, peers) keeps a ``TlsWatch`` of its three files -- key, certificate, CA
bundle -- and uses what is on disk now for each *new* connection: a server through
gRPC's certificate-configuration fetcher (called before each handshake), a channel by
making a new gRPC channel for the calls that follow. Connections and streams already
open keep the pair they started with.

A change is seen by a ``stat`` of the three files (inode, size, mtime, ctime), so a
rename into place and a rewrite alike count. Files that do not make a usable set (half
written, not PEM, a key that is not the certificate's, an empty CA bundle) are said in
one WARNING line naming the file, and the set read before goes on being used until the
files change again. ``CaBundle`` does the same for a CA bundle alone: the CAs the CRL
check (``pki.Revocations``) and the peers' grant check (``grants.Verifier``) read, every
CA of it (the old and the new one during a CA rotation).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("workspace.tls")

Stamp = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one side of mutual TLS, checked to go together."""

    key: bytes
    cert: bytes
    ca: bytes


class TlsFileError(ValueError):
    """A TLS file that cannot be used; ``path`` names it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(path, f"cannot read it ({exc.strerror or exc})") from None


def load(key_file: Path, cert_file: Path, ca_file: Path) -> TlsMaterial:
    """The three files, checked: the certificate (chain) and CA bundle parse, and the key
    is the first certificate's. TlsFileError names the file that is wrong."""
    key, cert, ca = _read(key_file), _read(cert_file), _read(ca_file)
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError as exc:
        raise TlsFileError(cert_file, f"not a PEM certificate ({exc})") from None
    try:
        x509.load_pem_x509_certificates(ca)
    except ValueError as exc:
        raise TlsFileError(ca_file, f"not a PEM CA bundle ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key, None)
    except (ValueError, TypeError) as exc:
        raise TlsFileError(key_file, f"not a PEM private key ({exc})") from None
    if _spki(private.public_key()) != _spki(chain[0].public_key()):
        raise TlsFileError(key_file, f"not the key of the certificate in {cert_file}")
    return TlsMaterial(key, cert, ca)


def stamp(files: tuple[Path, ...]) -> Stamp | None:
    """What tells a change of ``files`` (inode, size, mtime, ctime of each; None while one
    is missing, e.g. being renamed into place: look again later)."""
    try:
        stats = [f.stat() for f in files]
    except OSError:
        return None
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats)


class CaBundle:
    """The CA certificates of a bundle file (``[tls]``'s ca.pem: one CA, or the old and the
    new one during a CA rotation), read again when the file changes, as ``TlsWatch``
    does. A bundle that cannot be used (unreadable, not PEM, empty) is said in one
    WARNING and the CAs read before stay in use until it changes again; at the first read
    it raises TlsFileError. ``generation`` moves each time another set is read."""

    def __init__(self, ca_file: str | Path) -> None:
        self.file = Path(ca_file)
        self._lock = threading.Lock()
        self._seen = stamp((self.file,))
        self._cas = self._load()
        self.generation = 0

    def _load(self) -> list[x509.Certificate]:
        data = _read(self.file)
        try:
            cas = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise TlsFileError(self.file, f"not a PEM CA bundle ({exc})") from None
        return cas

    def certs(self) -> list[x509.Certificate]:
        """The CAs of the bundle now (the file is checked, a stat, and re-read if it changed)."""
        seen = stamp((self.file,))
        if seen is None or seen == self._seen:
            return self._cas
        with self._lock:
            if seen != self._seen:
                self._seen = seen
                try:
                    cas = self._load()
                except TlsFileError as exc:
                    log.warning(
                        "TLS: %s changed but cannot be used (%s); still using the CAs read before",
                        exc.path,
                        exc,
                    )
                    return self._cas
                if cas != self._cas:
                    self._cas = cas
                    self.generation += 1
                    log.info("TLS: using the %d CA(s) now in %s", len(cas), self.file)
            return self._cas


class TlsWatch:
    """The current ``TlsMaterial`` of three files; ``poll`` reads them again when one of
    them changed, and keeps the set read before when the new one cannot be used.

    The first read, ``strict`` (a server: a daemon does not start on files it cannot
    use), raises TlsFileError; otherwise (a channel, made again by an agent each time it
    reconnects, maybe in the middle of a rotation) it says so in a WARNING and takes
    the files as they are, as gRPC would (its handshakes then fail), until they change."""

    def __init__(self, key_file: Path, cert_file: Path, ca_file: Path, strict: bool) -> None:
        self.files = (key_file, cert_file, ca_file)
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._refused: Stamp | None = None
        try:
            self.material = load(*self.files)
        except TlsFileError as exc:
            if strict:
                raise
            log.warning("TLS: %s cannot be used (%s)", exc.path, exc)
            self.material = TlsMaterial(*(_read(f) for f in self.files))
            self._seen, self._refused = None, self._seen
        # Moves each time another set is read.
        self.generation = 0

    def _stamp(self) -> Stamp | None:
        return stamp(self.files)

    def poll(self) -> TlsMaterial | None:
        """The new set when the files changed since and make a usable one; else None."""
        seen = self._stamp()
        with self._lock:
            if seen is None or seen == self._seen or seen == self._refused:
                return None
            try:
                material = load(*self.files)
            except TlsFileError as exc:
                self._refused = seen
                log.warning(
                    "TLS: %s changed but cannot be used (%s); still using the certificate "
                    "read before",
                    exc.path,
                    exc,
                )
                return None
            self._seen, self._refused = seen, None
            if material == self.material:
                return None
            self.material = material
            self.generation += 1
            log.info("TLS: using the new certificate in %s", self.files[1])
            return material


# -- servers -----------------------------------------------------------------------------------


def _server_config(m: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)


def server_credentials(watch: TlsWatch) -> grpc.ServerCredentials:
    """Mutual-TLS server credentials that present the files' current certificate, and
    trust their current CA bundle, at each new connection (gRPC asks before each
    handshake)."""

    def fetch() -> Any:
        try:
            m = watch.poll()
        except Exception:  # never fail a handshake for the watch's sake
            log.exception("TLS: reading %s again failed", watch.files[1])
            return None
        return None if m is None else _server_config(m)

    return grpc.dynamic_ssl_server_credentials(
        _server_config(watch.material), fetch, require_client_authentication=True
    )


# -- channels ----------------------------------------------------------------------------------


class ChannelClosed(ValueError):
    """A call on a ReloadingChannel that was closed: the ValueError gRPC's own channel
    raises then, told apart so that the client names it (``errors.ClientClosed``)."""


class ReloadingChannel(grpc.Channel):
    """A TLS channel that, when the files changed, sends the calls that follow through a
    new gRPC channel made with the new client certificate (``make``). Calls and streams
    under way stay on the channel they began on; channels left behind are closed with
    this one."""

    def __init__(self, watch: TlsWatch, make: Callable[[TlsMaterial], grpc.Channel]) -> None:
        self.watch = watch
        self._make = make
        self._lock = threading.Lock()
        self._inner = make(watch.material)
        self._retired: list[grpc.Channel] = []
        self._closed = False

    def current(self) -> grpc.Channel:
        """The gRPC channel new calls go through (made anew after a rotation)."""
        m = self.watch.poll()
        with self._lock:
            if self._closed:
                raise ChannelClosed("Cannot invoke RPC: the channel is closed")
            if m is not None:
                self._retired.append(self._inner)
                self._inner = self._make(m)
            return self._inner

    def multicallable(self, kind: str, method: str, args: Any, kw: Any) -> Any:
        """(channel, ``kind`` (``unary_unary``...) of ``method`` on it): the current one."""
        self.current()
        with self._lock:  # never made on a closed channel (that crashes the process)
            if self._closed:
                raise ChannelClosed("Cannot invoke RPC: the channel is closed")
            return self._inner, getattr(self._inner, kind)(method, *args, **kw)

    # -- grpc.Channel ----------------------------------------------------------------------

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self.current().subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        with self._lock:
            channels = [self._inner, *self._retired]
        for c in channels:
            c.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._retired = [self._inner, *self._retired], []
        for c in channels:
            c.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unary_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Call(self, "unary_unary", method, args, kw)

    def unary_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Call(self, "unary_stream", method, args, kw)

    def stream_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Call(self, "stream_unary", method, args, kw)

    def stream_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        return _Call(self, "stream_stream", method, args, kw)


class _Call:
    """A multicallable of a ReloadingChannel: each invocation goes to its current channel
    (the gRPC multicallable made once per channel)."""

    def __init__(self, ch: ReloadingChannel, kind: str, method: str, args: Any, kw: Any) -> None:
        self.ch, self.kind, self.method, self.args, self.kw = ch, kind, method, args, kw
        self._made: tuple[grpc.Channel, Any] | None = None

    def _target(self) -> Any:
        made = self._made
        if made is None or made[0] is not self.ch.current():
            made = self._made = self.ch.multicallable(self.kind, self.method, self.args, self.kw)
        return made[1]

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._target()(*args, **kw)

    def with_call(self, *args: Any, **kw: Any) -> Any:
        return self._target().with_call(*args, **kw)

    def future(self, *args: Any, **kw: Any) -> Any:
        return self._target().future(*args, **kw)
