"""The test appliance boots under the site's private libvirtd, gets its pinned address
from our dnsmasq, reports READY on its serial console and powers off on ACPI shutdown.

The domain XML is written here on purpose (minimal, independent of agent/virt), so
this test proves the host environment, not the domain generator.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from agent.net.bridge import delete_bridge, ensure_bridge
from agent.net.dhcp import DhcpServer
from images.appliance import Appliance
from tests.host.conftest import GATEWAY, SUBNET, unique_name
from workspace.site.hostenv import HostEnv

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.host

MAC = "52:54:00:d2:00:2a"
PINNED_IP = "10.213.0.42"
READY_TIMEOUT_S = 180.0  # TCG on a loaded 2-core machine; ~7 s when idle
POWEROFF_TIMEOUT_S = 30.0


def domain_xml(name: str, appliance: Appliance, bridge: str, mac: str, console_log: Path) -> str:
    a = appliance
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(a.kernel))}</kernel>
    <initrd>{escape(str(a.initrd))}</initrd>
    <cmdline>{escape(a.cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={quoteattr(str(a.disk))}/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <source bridge={quoteattr(bridge)}/>
      <mac address={quoteattr(mac)}/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file={quoteattr(str(console_log))} append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def wait_for_line(
    path: Path, prefix: str, timeout_s: float, meanwhile: Callable[[], object] = lambda: None
) -> str:
    """The first line of ``path`` that starts with ``prefix``, read every 0.1 s, calling
    ``meanwhile`` each time (a libvirt call: a connection without an event loop answers
    libvirtd's keepalive probes only inside a call, and one idle for 5 x 5 s, a boot
    under a loaded TCG, is closed: "Cannot write data: Broken pipe" at its next use)."""
    deadline = time.monotonic() + timeout_s
    while True:
        meanwhile()
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                line = line.strip("\r\n\0 ")
                if line.startswith(prefix):
                    return line
        if time.monotonic() > deadline:
            text = path.read_text(errors="replace") if path.exists() else "(no console log)"
            raise AssertionError(f"no {prefix} line within {timeout_s} s; console:\n{text[-3000:]}")
        time.sleep(0.1)


@pytest.fixture
def network(hostenv: HostEnv) -> Iterator[tuple[str, DhcpServer]]:
    bridge = unique_name("wsb")
    ensure_bridge(bridge, f"{GATEWAY}/24", netns=hostenv.netns)
    server = DhcpServer(
        bridge,
        hostenv.site_dir / "dhcp" / bridge,
        SUBNET,
        router=GATEWAY,
        command_prefix=hostenv.run_prefix(),
        log_dhcp=True,
    )
    try:
        yield bridge, server
    finally:
        server.stop()
        delete_bridge(bridge, netns=hostenv.netns)


def test_appliance_boots_gets_pinned_ip_and_powers_off_on_acpi(
    hostenv: HostEnv, appliance: Appliance, network: tuple[str, DhcpServer]
) -> None:
    bridge, server = network
    name = unique_name("wsvm")  # domain names must be unique on the host (cgroups)
    hostname = f"appl{name[4:].replace('-', 'x')}"
    server.set_hosts([(MAC, PINNED_IP, hostname)])
    server.ensure_running()
    console = hostenv.site_dir / "consoles" / f"{name}.log"
    console.parent.mkdir(exist_ok=True)

    conn = libvirt.open(hostenv.libvirt_uri)
    dom = None
    try:
        dom = conn.defineXML(domain_xml(name, appliance, bridge, MAC, console))
        started = time.monotonic()
        dom.create()
        ready = wait_for_line(console, "WORKSPACE-READY", READY_TIMEOUT_S, dom.isActive)
        ready_s = time.monotonic() - started
        fields = dict(f.split("=", 1) for f in ready.split()[1:])
        assert fields == {"ip": PINNED_IP, "hostname": hostname}
        disks = wait_for_line(console, "WORKSPACE-DISKS", 1.0)
        assert disks.split()[1:] == ["vda:16777216:1"]  # the raw disk, read-only
        assert f"{MAC} {PINNED_IP}" in server.leases_path.read_text()
        # The tap device lives in the site's namespace, on our bridge.
        show = ["ip", "-n", hostenv.netns, "-o", "link", "show", "master", bridge]
        links = subprocess.run(show, capture_output=True, text=True, check=True).stdout
        assert re.search(r"vnet\d+", links), links

        subprocess.run(
            ["virsh", "-c", hostenv.libvirt_uri, "shutdown", name, "--mode", "acpi"],
            check=True,
            capture_output=True,
        )
        asked = time.monotonic()
        while dom.isActive():
            assert time.monotonic() - asked < POWEROFF_TIMEOUT_S, "no ACPI power-off in time"
            time.sleep(0.1)
        poweroff_s = time.monotonic() - asked
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        assert "WORKSPACE-POWEROFF" in console.read_text(errors="replace")
        print(f"\nappliance: define->READY {ready_s:.1f} s, ACPI shutdown->off {poweroff_s:.1f} s")
    finally:
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
