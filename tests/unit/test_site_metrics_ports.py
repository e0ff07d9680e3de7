"""`site up` keeps each daemon's metrics port across starts, unless another process took
it while the daemon was stopped (the daemon would then refuse to start, at every `site
up`, on "metrics_listen: cannot bind ...: in use")."""

from __future__ import annotations

import socket
from pathlib import Path

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


def test_after_site_down_the_ports_the_configs_name_are_kept(tmp_path: Path) -> None:
    """`site down` removes site.json: the next `site up` used to pick new ports, and a
    Prometheus scraping the ones `site status` showed lost the site. The configs the last
    start wrote still name them."""
    service, agent = "127.0.0.1:19464", "127.0.0.1:19465"
    (tmp_path / "service.toml").write_text(f'listen = "unix:/x"\nmetrics_listen = "{service}"\n')
    (tmp_path / "agent.toml").write_text(f'node = "local-1"\nmetrics_listen = "{agent}"\n')
    (tmp_path / "broken.toml").write_text("metrics_listen = \n")
    written = metrics_ports.configured(
        {
            "service": tmp_path / "service.toml",
            "local-1": tmp_path / "agent.toml",
            "local-2": tmp_path / "broken.toml",
            "local-3": tmp_path / "missing.toml",
        }
    )
    assert written == {"service": service, "local-1": agent}
    # (taken as running: whether those two ports are free here now is another test's)
    up = {"service", "local-1"}
    got = metrics_ports.addresses(None, ["local-1", "local-2"], running=up, written=written)
    assert (got["service"], got["local-1"]) == (service, agent)
    assert got["local-2"] not in (service, agent)
