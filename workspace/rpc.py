"""Every gRPC channel and server is built here, from config.

Addresses are "host:port" (TCP) or "unix:/path" (a unix socket). Credentials come
from a TlsConfig: when it is set, both sides use mutual TLS; no call site changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures

import grpc

from workspace.config import TlsConfig

# Generous message size: console tails and blob chunks.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS = [
    *_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def channel(address: str, tls: TlsConfig | None = None) -> grpc.Channel:
    """A client channel to ``address`` with the credentials ``tls`` describes."""
    if tls is not None and tls.enabled:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca_file),
            private_key=_read(tls.key_file) if tls.key_file else None,
            certificate_chain=_read(tls.cert_file) if tls.cert_file else None,
        )
        return grpc.secure_channel(address, creds, options=_OPTIONS)
    return grpc.insecure_channel(address, options=_OPTIONS)


def server(
    max_workers: int = 64,
    maximum_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    thread_name_prefix: str = "rpc",
) -> grpc.Server:
    """A server with its own pool of ``max_workers`` threads; calls beyond
    ``maximum_concurrent_rpcs`` (running or queued) are refused with RESOURCE_EXHAUSTED."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix),
        options=_SERVER_OPTIONS,
        interceptors=interceptors,
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )


def bind(srv: grpc.Server, address: str, tls: TlsConfig | None = None) -> int:
    """Bind ``srv`` to ``address``; returns the port (0 for unix sockets)."""
    if tls is not None and tls.enabled:
        creds = grpc.ssl_server_credentials(
            [(_read(tls.key_file), _read(tls.cert_file))],
            root_certificates=_read(tls.ca_file),
            require_client_auth=True,
        )
        return srv.add_secure_port(address, creds)
    return srv.add_insecure_port(address)
