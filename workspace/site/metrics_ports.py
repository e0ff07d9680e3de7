"""The local site's metrics addresses: `site up` turns metrics on for the service and every
agent, each on a free loopback port, kept across `site up`s (a daemon still running
keeps its port; after `site down`, which removes site.json, the port its config names),
and recorded in site.json for `site status`."""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

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


def is_free(address: str) -> bool:
    """Whether ``address`` (``127.0.0.1:PORT``) can be bound on loopback now."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except (OSError, ValueError):
            return False
    return True


def configured(configs: Mapping[str, Path]) -> dict[str, str]:
    """``service`` and node names → the ``metrics_listen`` of their config file (what the
    last `site up` wrote there), for those that have one it can read."""
    out: dict[str, str] = {}
    for who, path in configs.items():
        try:
            address = tomllib.loads(path.read_text()).get("metrics_listen", "")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        if isinstance(address, str) and address.startswith(f"{LOOPBACK}:"):
            out[who] = address
    return out


def addresses(
    old: SiteRecord | None,
    nodes: Sequence[str],
    running: Collection[str] = (),
    written: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``service`` and each node → ``127.0.0.1:PORT``: the old record's, else the one its
    config names (``written``: after `site down`, which removes the record), else a free
    one. ``running`` (``service``, node names): the daemons that run on and keep theirs;
    a daemon to be started gets a new one if another process took its old one meanwhile."""
    before: dict[str, str] = dict(written or {})
    if old is not None:
        recorded = {a.node: address_of(a.metrics) for a in old.agents}
        recorded[SERVICE] = address_of(old.service_metrics)
        before.update({who: address for who, address in recorded.items() if address})
    taken: set[str] = set()
    out: dict[str, str] = {}
    for who in (SERVICE, *nodes):
        address = before.get(who, "")
        if address and who not in running and not is_free(address):
            address = ""
        while not address or address in taken:
            address = f"{LOOPBACK}:{free_port()}"
        taken.add(address)
        out[who] = address
    return out
