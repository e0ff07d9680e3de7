"""Serving a Prometheus registry on its own address (``metrics_listen``), for the service
and the agent: prometheus-client's HTTP server on a thread of its own, bound exactly to
the configured host and port (port 0: any free one)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from workspace.errors import ConfigError

log = logging.getLogger("workspace.metrics")


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics_listen: {address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``url`` names it with the port bound."""

    host: str
    port: int
    _httpd: Any
    _thread: Any

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve(registry: CollectorRegistry, address: str, what: str) -> MetricsServer:
    host, port = split_address(address)
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"metrics_listen: cannot bind {address}: {exc}") from exc
    server = MetricsServer(host, int(httpd.server_port), httpd, thread)
    log.info("%s metrics on %s", what, server.url)
    return server
