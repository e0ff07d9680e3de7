"""A local site's ``ws ssh -L``/``-R`` forwards, brought out of the node's namespace.

On a local site ssh runs inside the node's network namespace (the only place the VMs'
addresses are reached from), so a port it listens on for ``-L`` is that namespace's, and
the host ``-R`` connects to is that namespace's too: a browser on the host would not
reach a notebook forwarded with ``-L 8888:localhost:8888``. A unix socket is not bound
to a network namespace, only to the filesystem, and OpenSSH forwards to and from unix
sockets (``-L SOCKET:HOST:PORT``, ``-R PORT:SOCKET``). So ws hands ssh a socket in its
private directory (the known_hosts file's, 0700) in place of the TCP end, and listens
or connects on the host itself, passing bytes between the two (``Relay``):

* ``-L [BIND:]PORT:DEST`` becomes ``-L DIR/L0.sock:DEST``; ws listens on BIND:PORT on
  the host (loopback when BIND is not given, every address for ``*`` or an empty one,
  as ssh does without GatewayPorts), and each connection there is passed to the
  socket, which ssh carries to DEST as the guest sees it. PORT 0 takes a free port,
  and ws says which.
* ``-R [BIND:]PORT:HOST:HOSTPORT`` becomes ``-R [BIND:]PORT:DIR/R0.sock``; ws listens
  on that socket, and each connection ssh brings back is passed to HOST:HOSTPORT as
  the host sees it.

Forms that already name a unix socket on this side, and ``-D`` (ssh has no socket form
for it), are left as they are: ``-D`` still listens in the namespace.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from workspace import errors
from workspace.ports import UNIX_PATH_MAX

_CHUNK = 64 * 1024


def split_spec(spec: str) -> list[str]:
    """A forwarding spec's fields, split at colons outside square brackets (an IPv6
    address keeps its brackets)."""
    fields, field, depth = [], "", 0
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == ":" and depth == 0:
            fields.append(field)
            field = ""
        else:
            field += ch
    fields.append(field)
    return fields


def _is_port(field: str) -> bool:
    return field.isdigit() and int(field) <= 65535


def _is_path(field: str) -> bool:
    return "/" in field


def _host(field: str) -> str:
    return field[1:-1] if field.startswith("[") and field.endswith("]") else field


class Relay:
    """Listeners on the host and on unix sockets that pass each connection they accept
    on to the other side, in threads of their own, until ``close``."""

    def __init__(self, sockets_dir: Path, say: Callable[[str], None] | None = None) -> None:
        self.dir = sockets_dir
        self.say = say or (lambda line: print(f"ws: {line}", file=sys.stderr))
        self._listeners: list[socket.socket] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def bring_out(self, forwards: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """``forwards`` (ssh's flag and spec) as ssh in the namespace must get them, the
        host's ends opened here. FailedPrecondition if a port here cannot be listened on
        (nothing is left listening then: ``close``)."""
        out = []
        for n, (flag, spec) in enumerate(forwards):
            fields = split_spec(spec)
            if flag == "-L":
                out.append((flag, self._local(n, spec, fields)))
            elif flag == "-R":
                out.append((flag, self._remote(n, spec, fields)))
            else:
                self.say(
                    f"{flag} {spec} listens in the node's network namespace, not on this "
                    f"host (`ip netns exec NS ...` reaches it; -L can be relayed, {flag} not)"
                )
                out.append((flag, spec))
        return out

    def _local(self, n: int, spec: str, fields: list[str]) -> str:
        bind: str | None
        if _is_port(fields[0]) and len(fields) in (2, 3):
            bind, port, dest = None, int(fields[0]), fields[1:]
        elif len(fields) in (3, 4) and not _is_path(fields[0]) and _is_port(fields[1]):
            bind, port, dest = fields[0], int(fields[1]), fields[2:]
        else:
            return spec  # a unix socket here already, or something ssh will refuse
        path = self._socket_path(f"L{n}")
        bound = self._listen_tcp(bind, port)
        for address in bound:
            self.say(f"forwarding {address} to {':'.join(dest)} as the guest sees it")
        for sock in bound.values():
            self._serve(sock, lambda: _connect_unix(path))
        return ":".join([path, *dest])

    def _remote(self, n: int, spec: str, fields: list[str]) -> str:
        if len(fields) < 3 or _is_path(fields[-2]) or not _is_port(fields[-1]):
            return spec  # dynamic (SOCKS), or a unix socket here already
        host, port = _host(fields[-2]), int(fields[-1])
        path = self._socket_path(f"R{n}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        self._listeners.append(listener)
        self._serve(listener, lambda: socket.create_connection((host, port), timeout=30))
        return ":".join([*fields[:-2], path])

    def _socket_path(self, name: str) -> str:
        path = str(self.dir / f"{name}.sock")
        if len(path.encode()) > UNIX_PATH_MAX:
            raise errors.FailedPrecondition(
                f"cannot forward through {path}: over {UNIX_PATH_MAX} bytes "
                f"(a shorter TMPDIR helps)"
            )
        return path

    def _listen_tcp(self, bind: str | None, port: int) -> dict[str, socket.socket]:
        """Listening sockets on every address ``bind`` resolves to (loopback when none is
        given; every address for "" or "*", as ssh), all on one port (``port``, or the
        one the first got)."""
        host = "localhost" if bind is None else (None if bind in ("", "*") else _host(bind))
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise errors.FailedPrecondition(f"cannot listen on {host}: {exc.strerror}") from exc
        bound: dict[str, socket.socket] = {}
        failed: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                sock.listen(64)
            except OSError as exc:
                sock.close()
                failed = failed or exc
                continue
            port = sock.getsockname()[1]
            shown = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
            bound[f"{shown}:{port}"] = sock
            self._listeners.append(sock)
        if not bound:
            why = failed.strerror if failed else "no address"
            raise errors.FailedPrecondition(f"cannot listen on {host or '*'}:{port}: {why}")
        return bound

    def _serve(self, listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return  # closed
                threading.Thread(target=self._pair, args=(conn, connect), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def _pair(self, conn: socket.socket, connect: Callable[[], socket.socket]) -> None:
        try:
            other = connect()
        except OSError:
            conn.close()  # nothing at the other end (yet): refused, as ssh would
            return
        with self._lock:
            if self._closed:
                conn.close()
                other.close()
                return
            self._open.update((conn, other))
        back = threading.Thread(target=_pump, args=(other, conn), daemon=True)
        back.start()
        _pump(conn, other)
        back.join()
        with self._lock:
            self._open.difference_update((conn, other))
        conn.close()
        other.close()

    def close(self) -> None:
        """Stop listening and end every connection still open."""
        with self._lock:
            self._closed = True
            socks = [*self._listeners, *self._open]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from ``src`` to ``dst`` until ``src`` ends; then ``dst`` is told so (and
    closed both ways if either failed)."""
    src.settimeout(None)
    how = socket.SHUT_WR
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        how = socket.SHUT_RDWR  # broken: the other direction ends too
    with contextlib.suppress(OSError):
        dst.shutdown(how)
