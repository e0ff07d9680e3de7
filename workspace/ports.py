"""Whether a TCP address can be listened on, asked before a daemon listens there.

The service and the agent check each address they will listen on (``listen``,
``node_listen``, ``peer_listen``, ``metrics_listen``) before they make or migrate their
store or state, and again just before they bind it: one taken by another process is
refused in one line naming the config key, the address and why ("in use"), and is
never handed to gRPC, which, refused, first prints a line of its own to stderr
(``add_port.cc ... Failed to add port to server``). The probe binds a socket of its own
as the servers do (SO_REUSEADDR, no SO_REUSEPORT) and closes it at once."""

from __future__ import annotations

import errno
import socket

# The longest path a unix socket's address holds: sun_path is 108 bytes on Linux, its
# terminating NUL included.
UNIX_PATH_MAX = 107


def reason(exc: OSError) -> str:
    """Why a bind failed, in the words every listen error uses."""
    return "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))


def why_not_bindable(host: str, port: int, family: int = socket.AF_UNSPEC) -> str:
    """'' when a listening socket can be bound to ``host`` (a name, an address, or ''
    for every address) and ``port`` now, else why not. Every address the host resolves
    to is tried, as gRPC does: it listens on those it can, and fails only when it can
    bind none. Port 0 (any free port) can always be bound."""
    if port == 0:
        return ""
    try:
        infos = socket.getaddrinfo(
            host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except OSError as exc:
        return exc.strerror or str(exc)
    why = ""
    for fam, kind, proto, _, where in infos:
        try:
            probe = socket.socket(fam, kind, proto)
        except OSError as exc:
            if family == socket.AF_UNSPEC and where[0] == "::" and exc.errno == errno.EAFNOSUPPORT:
                # A host without IPv6: gRPC listens on [::] there as on 0.0.0.0.
                return why_not_bindable("0.0.0.0", port, socket.AF_INET)
            why = why or reason(exc)  # this family is not for this host: try the next
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                why = why or reason(exc)
                continue
        return ""
    return why
