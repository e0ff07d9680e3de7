"""`site up` keeps each daemon's metrics port across starts, unless another process took
it while the daemon was stopped (the daemon would then refuse to start, at every `site
up`, on "metrics_listen: cannot bind ...: in use")."""

from __future__ import annotations

import socket

from workspace.site import metrics_ports
from workspace.site.record import AgentRecord, SiteRecord


def held() -> tuple[socket.socket, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, f"127.0.0.1:{s.getsockname()[1]}"


def record(service: str, agent: str) -> SiteRecord:
    return SiteRecord(
        dir="/x",
        address="unix:/x/service.sock",
        driver="fake",
        service_metrics=metrics_ports.url(service),
        agents=[AgentRecord(node="local-1", metrics=metrics_ports.url(agent))],
    )


def test_a_port_taken_while_its_daemon_was_stopped_is_replaced() -> None:
    other, taken = held()  # someone else's, since the site went down
    try:
        free = f"127.0.0.1:{metrics_ports.free_port()}"
        got = metrics_ports.addresses(record(taken, free), ["local-1"], running=set())
        assert got["service"] != taken and got["service"].startswith("127.0.0.1:")
        assert got["local-1"] == free  # still free: kept
    finally:
        other.close()


def test_a_running_daemon_keeps_its_port() -> None:
    mine, address = held()  # the running service's own
    try:
        got = metrics_ports.addresses(record(address, ""), ["local-1"], running={"service"})
        assert got["service"] == address
    finally:
        mine.close()
