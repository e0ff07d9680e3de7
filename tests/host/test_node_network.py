"""Bridges and the per-bridge dnsmasq, for real, inside the site's network namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.net.bridge import bridge_exists, delete_bridge, ensure_bridge
from agent.net.dhcp import DhcpServer
from tests.host.conftest import GATEWAY, SUBNET, VethClient, ip, unique_name
from workspace import errors
from workspace.hostproc import process_cmdline
from workspace.site.hostenv import HostEnv, netns_pids

pytestmark = pytest.mark.host

MAC_A = "52:54:00:d0:00:0a"
MAC_B = "52:54:00:d0:00:0b"
MAC_C = "52:54:00:d0:00:0c"


def link_info(netns: str, name: str) -> dict[str, Any]:
    (info,) = json.loads(ip("-n", netns, "-j", "-d", "addr", "show", "dev", name))
    assert isinstance(info, dict)
    return info


def dnsmasq_pids(netns: str, server: DhcpServer) -> list[int]:
    mark = f"--pid-file={server.pid_path}"
    return [p for p in netns_pids(netns) if mark in (process_cmdline(p) or [])]


def make_server(hostenv: HostEnv, bridge: str, **kwargs: object) -> DhcpServer:
    return DhcpServer(
        bridge,
        hostenv.site_dir / "dhcp" / bridge,
        SUBNET,
        command_prefix=hostenv.run_prefix(),
        log_dhcp=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_ensure_bridge(hostenv: HostEnv) -> None:
    ns = hostenv.netns
    name = unique_name("wsb")
    index = ensure_bridge(name, f"{GATEWAY}/24", netns=ns)
    info = link_info(ns, name)
    assert info["ifindex"] == index
    assert info["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in info["flags"]
    addrs = [(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["family"] == "inet"]
    assert addrs == [(GATEWAY, 24)]

    # Idempotent: same link, no second address; brought up again if someone downed it.
    ip("-n", ns, "link", "set", name, "down")
    assert ensure_bridge(name, f"{GATEWAY}/24", netns=ns) == index
    info = link_info(ns, name)
    assert "UP" in info["flags"]
    assert len([a for a in info["addr_info"] if a["family"] == "inet"]) == 1
    assert ensure_bridge(name, None, netns=ns) == index
    assert bridge_exists(name, netns=ns)

    assert delete_bridge(name, netns=ns) is True
    assert not bridge_exists(name, netns=ns)
    assert delete_bridge(name, netns=ns) is False


def test_bridge_refuses_other_links(hostenv: HostEnv) -> None:
    ns = hostenv.netns
    name = unique_name("wsd")
    ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", unique_name("wsp"))
    try:
        with pytest.raises(errors.FailedPrecondition):
            ensure_bridge(name, None, netns=ns)
        with pytest.raises(errors.FailedPrecondition):
            delete_bridge(name, netns=ns)
        assert json.loads(ip("-n", ns, "-j", "link", "show", name))  # still there
    finally:
        ip("-n", ns, "link", "del", name)


def test_bridge_in_missing_netns_is_an_error() -> None:
    with pytest.raises(errors.FailedPrecondition):
        ensure_bridge("wsbr0", None, netns=f"ws-missing-{os.getpid()}")
    assert not os.path.exists(f"/run/netns/ws-missing-{os.getpid()}")


def test_dhcp_server_lifecycle(
    hostenv: HostEnv, veth_clients: list[VethClient], lease_script: Path
) -> None:
    ns = hostenv.netns
    bridge = unique_name("wsb")
    ensure_bridge(bridge, f"{GATEWAY}/24", netns=ns)
    server = make_server(hostenv, bridge, router=GATEWAY, dns_servers=["10.213.0.53"])
    try:
        assert server.set_hosts([(MAC_A, "10.213.0.10", "vma")]) is True
        pid = server.ensure_running()
        assert server.pid == pid
        assert process_cmdline(pid)[0] == "dnsmasq"  # type: ignore[index]
        # dnsmasq dropped root (the site dir is world-traversable).
        assert Path(f"/proc/{pid}/status").read_text().count("\t65534\t") >= 1
        client = VethClient(ns, bridge, MAC_A, lease_script)
        veth_clients.append(client)
        lease = client.lease()
        assert lease is not None
        assert lease["ip"] == "10.213.0.10"
        assert lease["mask"] == "24"
        assert lease["hostname"] == "vma"
        assert lease["router"] == GATEWAY
        assert lease["dns"] == "10.213.0.53"

        # An unknown MAC gets nothing (static leases only).
        client.set_mac(MAC_B)
        assert client.lease(tries=2) is None

        # Adding a host: SIGHUP, same process, the new MAC is served at once.
        hosts = [(MAC_A, "10.213.0.10", "vma"), (MAC_B, "10.213.0.11", "vmb")]
        assert server.set_hosts(hosts) is True
        assert server.pid == pid
        lease = client.lease()
        assert lease is not None and (lease["ip"], lease["hostname"]) == ("10.213.0.11", "vmb")
        assert server.set_hosts(list(reversed(hosts))) is False  # same content: no reload

        # Moving 10.213.0.10 (still leased to MAC_A) to MAC_C: restart + stale lease dropped.
        assert MAC_A in server.leases_path.read_text()
        assert server.set_hosts([(MAC_B, "10.213.0.11", "vmb"), (MAC_C, "10.213.0.10", "vmc")])
        assert server.pid not in (None, pid)
        assert MAC_A not in server.leases_path.read_text()
        client.set_mac(MAC_C)
        lease = client.lease()
        assert lease is not None and (lease["ip"], lease["hostname"]) == ("10.213.0.10", "vmc")

        # kill -9 by its pid: ensure_running starts a new one.
        old = server.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.pid is None
        new = server.ensure_running()
        assert new != old
        assert server.ensure_running() == new
        assert client.lease() is not None

        # A second object for the same state dir (an agent restart) adopts it.
        again = make_server(hostenv, bridge, router=GATEWAY, dns_servers=["10.213.0.53"])
        assert again.pid == new
        assert again.ensure_running() == new
        assert (
            again.set_hosts([(MAC_B, "10.213.0.11", "vmb"), (MAC_C, "10.213.0.10", "vmc")]) is False
        )
        assert dnsmasq_pids(ns, server) == [new]

        # The network's DNS servers changed while the agent was away: the agent's new
        # object finds the dnsmasq running with the old option and restarts it.
        other = make_server(hostenv, bridge, router=GATEWAY, dns_servers=["10.213.0.54"])
        assert other.pid == new
        changed = other.ensure_running()
        assert changed != new and dnsmasq_pids(ns, server) == [changed]
        lease = client.lease()
        assert lease is not None and lease["dns"] == "10.213.0.54"
        # And while it runs: set_options, then the next pass restarts it.
        assert other.set_options(GATEWAY, ["10.213.0.55", "10.213.0.56"]) is True
        assert other.set_options(GATEWAY, ["10.213.0.55", "10.213.0.56"]) is False
        assert other.pid == changed  # nothing happens before the next pass
        again = other
        new = again.ensure_running()
        assert new != changed and again.ensure_running() == new
        assert dnsmasq_pids(ns, server) == [new]
        lease = client.lease()
        assert lease is not None and lease["dns"] == "10.213.0.55,10.213.0.56"

        again.stop()
        assert again.pid is None and server.pid is None
        assert dnsmasq_pids(ns, server) == []
        server.stop()  # idempotent
    finally:
        server.stop()
        delete_bridge(bridge, netns=ns)


def test_two_bridges_two_servers_no_router(
    hostenv: HostEnv, veth_clients: list[VethClient], lease_script: Path
) -> None:
    """One dnsmasq per bridge in one namespace; without a router none is offered."""
    ns = hostenv.netns
    servers = []
    try:
        for n, subnet in enumerate(("10.213.1.0/24", "10.213.2.0/24")):
            bridge = unique_name("wsb")
            base = subnet.rsplit(".", 1)[0]
            ensure_bridge(bridge, f"{base}.1/24", netns=ns)
            server = DhcpServer(
                bridge,
                hostenv.site_dir / "dhcp" / bridge,
                subnet,
                command_prefix=hostenv.run_prefix(),
            )
            servers.append(server)
            mac = f"52:54:00:d1:00:{n:02x}"
            server.set_hosts([(mac, f"{base}.20", f"two{n}")])
            server.ensure_running()
            client = VethClient(ns, bridge, mac, lease_script)
            veth_clients.append(client)
            lease = client.lease()
            assert lease is not None
            got = (lease["ip"], lease["hostname"], lease["router"], lease["dns"])
            assert got == (f"{base}.20", f"two{n}", "", "")
        assert len({s.pid for s in servers}) == 2
    finally:
        for server in servers:
            server.stop()
            delete_bridge(server.bridge, netns=ns)


# --- the site's host environment (workspace.site.hostenv) ------------------------------


def test_private_libvirtd_is_isolated(hostenv: HostEnv, tmp_path: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    inode = os.stat(f"/run/netns/{hostenv.netns}").st_ino
    pid = hostenv.pid("libvirtd")
    assert pid is not None and hostenv.running()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == inode
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(
        f"/proc/{hostenv.pid('virtlogd')}/ns/mnt"
    )
    # Our config is what it reads; its files land in the site directory.
    assert (hostenv.site_dir / "libvirt" / "etc" / "qemu.conf").exists()
    assert hostenv.host_path("/var/log/libvirt/libvirtd.log").exists()
    assert hostenv.libvirt_socket.is_socket()

    other = HostEnv(tmp_path / "site", unique_name("wst-"))
    try:
        other.up()
        assert other.pid("libvirtd") not in (None, pid)
        xml = (
            "<domain type='qemu'><name>{}</name><memory>65536</memory>"
            "<os><type>hvm</type></os></domain>"
        )
        name = unique_name("wsiso")
        a = libvirt.open(hostenv.libvirt_uri)
        b = libvirt.open(other.libvirt_uri)
        try:
            a.defineXML(xml.format(name))
            assert name in [d.name() for d in a.listAllDomains()]
            assert name not in [d.name() for d in b.listAllDomains()]
            a.lookupByName(name).undefine()
        finally:
            a.close()
            b.close()
    finally:
        other.down()
    assert not os.path.exists(f"/run/netns/{other.netns}")


def test_hostenv_recovers_from_crashes_and_never_kills_strangers(tmp_path: Path) -> None:
    env = HostEnv(tmp_path / "site", unique_name("wst-"))
    stranger = subprocess.Popen(["sleep", "300"])  # not ours: must survive everything
    try:
        env.up()
        env.up()  # idempotent
        virtlogd = env.pid("virtlogd")
        libvirtd = env.pid("libvirtd")
        assert virtlogd and libvirtd

        # libvirtd crashes: up() restarts only it, in the same mount namespace.
        os.kill(libvirtd, signal.SIGKILL)
        wait_until(lambda: env.pid("libvirtd") is None)
        assert not env.running()
        env.up()
        assert env.pid("virtlogd") == virtlogd
        new = env.pid("libvirtd")
        assert new not in (None, libvirtd)
        assert os.readlink(f"/proc/{new}/ns/mnt") == os.readlink(f"/proc/{virtlogd}/ns/mnt")

        # Both die and their pid files now name a stranger's pid: left alone.
        for daemon in ("libvirtd", "virtlogd"):
            pid = env.pid(daemon)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda d=daemon: env.pid(d) is None)  # type: ignore[misc]
            (env.pid_dir / f"{daemon}.pid").write_text(f"{stranger.pid}\n")
        assert env.pid("libvirtd") is None
        # Something left running inside the namespace (a forgotten dnsmasq, a VM).
        leftover = subprocess.Popen([*env.run_prefix(), "sleep", "300"])
        wait_until(lambda: leftover.pid in netns_pids(env.netns))
        env.down()
        assert leftover.wait(timeout=10) is not None
        assert stranger.poll() is None
        assert not os.path.exists(f"/run/netns/{env.netns}")
        env.down()  # idempotent

        # A half-made site (namespace only, no daemons) comes up, and goes down.
        ip("netns", "add", env.netns)
        env.up()
        assert env.running()
    finally:
        env.down()
        stranger.kill()
        stranger.wait()
    assert stranger.returncode == -signal.SIGKILL


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
