"""Fixtures for end-to-end tests on this host (root, libvirtd, QEMU, bridges, dnsmasq).

Everything happens inside network namespaces these fixtures create (names carry the
pid), so no test traffic reaches the host's networks; teardown removes the namespaces
and stops what was started (by recorded pid, never by name) even when a test fails.

* ``hostenv`` (module): a fresh site: network namespace + private libvirtd/virtlogd
  (workspace.site.hostenv). ``hostenv.libvirt_uri`` is what a driver connects to,
  ``hostenv.run_prefix()`` runs a command inside the namespace.
* ``appliance`` (session): the test appliance (images.appliance), built once into
  ``$WS_APPLIANCE_CACHE`` (default /var/tmp/ws-appliance-cache) and reused.
* ``veth_clients`` (function): DHCP clients in their own namespaces, plugged into a
  bridge of the site by a veth pair: a lease in ~0.1 s without booting a VM.

Set ``WS_KEEP_SITE=1`` to keep a site directory (logs, console files) after the tests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.appliance import Appliance, build
from workspace.site.hostenv import HostEnv

APPLIANCE_CACHE = Path(os.environ.get("WS_APPLIANCE_CACHE", "/var/tmp/ws-appliance-cache"))
SUBNET = "10.213.0.0/24"  # only ever configured inside the test namespaces
GATEWAY = "10.213.0.1"
_counter = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A name unique on this host for this run: prefix + pid + counter (<= 15 chars)."""
    return f"{prefix}{os.getpid() % 100000}-{next(_counter)}"[:15]


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("host tests need root (network namespaces, libvirtd, dnsmasq)")


@pytest.fixture(scope="module")
def hostenv() -> Iterator[HostEnv]:
    site_dir = Path(tempfile.mkdtemp(prefix="ws-site-", dir="/var/tmp"))
    site_dir.chmod(0o755)  # dnsmasq (as nobody) reads hosts files below it
    env = HostEnv(site_dir, unique_name("wst-"))
    try:
        env.up()
        yield env
    finally:
        env.down()
        if os.environ.get("WS_KEEP_SITE"):
            print(f"\nkept site directory {site_dir}")
        else:
            shutil.rmtree(site_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def appliance() -> Appliance:
    return build(APPLIANCE_CACHE)


def ip(*args: str) -> str:
    """Run ``ip ARGS`` (tests may use iproute2; the product uses pyroute2)."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


_LEASE_SCRIPT = """#!/bin/sh
dns=$(echo $dns | tr ' ' ,)  # several servers: one field
[ "$1" = bound ] && echo "BOUND ip=$ip mask=$mask router=$router dns=$dns hostname=$hostname"
exit 0
"""


class VethClient:
    """A DHCP client in its own namespace, plugged into ``bridge`` of ``site_netns``."""

    def __init__(self, site_netns: str, bridge: str, mac: str, script: Path) -> None:
        self.netns = unique_name("wsc-")
        self.site_netns = site_netns
        self.port = unique_name("wsv")
        self.script = script
        ip("netns", "add", self.netns)
        ip("-n", self.netns, "link", "set", "lo", "up")
        peer = ["peer", "name", "eth0", "netns", self.netns]
        ip("-n", site_netns, "link", "add", self.port, "type", "veth", *peer)
        ip("-n", site_netns, "link", "set", self.port, "master", bridge, "up")
        self.set_mac(mac)

    def set_mac(self, mac: str) -> None:
        ip("-n", self.netns, "link", "set", "eth0", "down")
        ip("-n", self.netns, "link", "set", "eth0", "address", mac, "up")

    def lease(self, tries: int = 5) -> dict[str, str] | None:
        """Ask for a lease (udhcpc); the offered values, or None if nobody answered."""
        udhcpc = f"udhcpc -i eth0 -s {self.script} -q -n -t {tries} -T 1 -O hostname"
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, "busybox", *udhcpc.split()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in proc.stdout.splitlines():
            if line.startswith("BOUND "):
                return dict(field.split("=", 1) for field in line.split()[1:])
        return None

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)


@pytest.fixture
def veth_clients() -> Iterator[list[VethClient]]:
    """Append ``VethClient(...)`` objects; they are removed after the test."""
    clients: list[VethClient] = []
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def lease_script(tmp_path: Path) -> Path:
    script = tmp_path / "lease.sh"
    script.write_text(_LEASE_SCRIPT)
    script.chmod(0o755)
    return script
