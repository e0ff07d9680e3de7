"""The local site's metrics addresses: `site up` turns metrics on for the service and every
agent, each on a free loopback port, kept across `site up`s (a daemon still running
keeps its port), and recorded in site.json for `site status`."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from workspace.site.record import SiteRecord

SERVICE = "service"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback now (the daemon binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def url(address: str) -> str:
    return f"http://{address}/metrics" if address else ""


def address_of(metrics_url: str) -> str:
    """``http://127.0.0.1:9464/metrics`` → ``127.0.0.1:9464`` ('' if it is not one)."""
    rest = metrics_url.removeprefix("http://")
    return rest.removesuffix("/metrics") if rest != metrics_url else ""


def addresses(old: SiteRecord | None, nodes: Sequence[str]) -> dict[str, str]:
    """``service`` and each node → ``127.0.0.1:PORT``: the old record's, else a free one."""
    before: dict[str, str] = {}
    if old is not None:
        before[SERVICE] = address_of(old.service_metrics)
        before.update({a.node: address_of(a.metrics) for a in old.agents})
    taken: set[str] = set()
    out: dict[str, str] = {}
    for who in (SERVICE, *nodes):
        address = before.get(who, "")
        while not address or address in taken:
            address = f"{LOOPBACK}:{free_port()}"
        taken.add(address)
        out[who] = address
    return out
