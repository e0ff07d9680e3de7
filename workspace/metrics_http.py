"""Serving a Prometheus registry on its own address (``metrics_listen``), for the service
and the agent: prometheus-client's WSGI app on a threading server of its own, bound
exactly to the configured host and port (port 0: any free one). What goes wrong serving
a scrape (a collector that raises) is logged, as one record (a JSON line with
``log_format = "json"``), not printed to stderr by wsgiref as lines of text.

Counters and histograms export no ``*_created`` series (``new_registry``): each is a
second series beside every labelled counter and histogram (when it was first counted),
which doubled the series a scrape stores and that no dashboard or alert reads."""

from __future__ import annotations

import io
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from workspace import ports
from workspace.errors import ConfigError

log = logging.getLogger("workspace.metrics")

# Hosts that bind every address rather than name one.
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


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
        """Where to scrape it. Bound to every address (``0.0.0.0``, ``::``), it is named
        by this host's name: the wildcard is no address another host can reach."""
        host = socket.gethostname() if self.host in WILDCARDS else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class _LoggedStderr(io.StringIO):
    """wsgiref's stderr for one request: what it writes (the traceback of a failed
    scrape) becomes one log record when it flushes."""

    def flush(self) -> None:
        text = self.getvalue().strip()
        if text:
            log.error("a metrics scrape failed: %s", text)
        self.seek(0)
        self.truncate()


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request."""

    def get_stderr(self) -> Any:
        return _LoggedStderr()


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("a metrics request from %s failed", client_address)


def new_registry() -> CollectorRegistry:
    """A registry for the service's or the agent's metrics. prometheus-client's switch
    for the ``*_created`` series is the process's (``disable_created_metrics``, as the
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` environment variable): turned off here, the
    one place either daemon makes its registry, before anything is counted."""
    disable_created_metrics()
    return CollectorRegistry(auto_describe=True)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_free(address: str) -> None:
    """ConfigError unless ``metrics_listen`` ``address`` can be listened on now (the
    daemons ask before they make their store or state), in the words of the gRPC
    listen addresses' errors: "metrics_listen: cannot bind ADDRESS: in use"."""
    host, port = split_address(address)
    if why := ports.why_not_bindable(host, port, _family(host)):
        raise ConfigError(f"metrics_listen: cannot bind {address}: {why}")


def serve(registry: CollectorRegistry, address: str, what: str) -> MetricsServer:
    host, port = split_address(address)
    server_class = type("MetricsHTTPServer", (_Server,), {"address_family": _family(host)})
    try:
        httpd: _Server = make_server(
            host, port, make_wsgi_app(registry), server_class, handler_class=_Handler
        )
    except OSError as exc:
        why = ports.reason(exc)
        raise ConfigError(f"metrics_listen: cannot bind {address}: {why}") from None
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    server = MetricsServer(host, int(httpd.server_port), httpd, thread)
    log.info("%s metrics on %s", what, server.url)
    return server
