"""grpc-core's own log lines stay out of the programs' output.

grpc-core writes to stderr by itself, in glog's format ("I1206 09:50:38.453733 9305
chttp2_transport.cc:1403] ipv4:…: Got goaway …"), at INFO for what the programs say
themselves: such lines landed among a daemon's log lines (one JSON object a line with
log_format = "json") and before a CLI's one-line error ("I1206 …
ssl_transport_security.cc:2563] Handshake failed …" above "ws: error: cannot reach …").
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GLOG = re.compile(r"^[IWEF]\d{4} ")

DIAL = """
import sys
import {package}  # what every program imports first
import grpc

channel = grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials())
try:
    grpc.channel_ready_future(channel).result(timeout=3)
except grpc.FutureTimeoutError:
    pass
"""


def not_tls() -> tuple[str, socket.socket]:
    """An address whose server answers a TLS handshake with plain HTTP."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}", server


def grpc_core_lines(package: str, **env: str) -> list[str]:
    """grpc-core's lines on stderr of a program that imports ``package`` first and fails a
    TLS handshake, with ``env`` in its environment."""
    address, server = not_tls()
    try:
        done = subprocess.run(
            [sys.executable, "-c", DIAL.format(package=package), address],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
            timeout=60,
            check=True,
        )
    finally:
        server.close()
    return [line for line in done.stderr.splitlines() if GLOG.match(line)]


@pytest.mark.parametrize("package", ["workspace", "agent"])
def test_a_failed_handshake_leaves_no_grpc_core_line(package: str) -> None:
    assert not grpc_core_lines(package)


def test_grpc_core_tracing_asked_for_is_shown() -> None:
    """GRPC_TRACE (grpc's debugging switch) alone turns on traces it writes at INFO: an
    ERROR level set under it showed none of them, and nothing said why."""
    assert grpc_core_lines("workspace", GRPC_TRACE="handshaker")
    assert grpc_core_lines("workspace", GRPC_VERBOSITY="INFO")
