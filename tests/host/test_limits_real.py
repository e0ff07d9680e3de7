"""Limits hold inside real guests: two cloud appliances on one node, one limited, one not.

The node is what a site node is: a network namespace with its own private libvirtd
(``workspace.site.hostenv``), so this also proves that such a libvirtd can give its
domains cgroup CPU limits here. Both guests hang off one bridge in the namespace and
get static addresses through the guest agent; everything is measured from inside
(through ``LibvirtDriver.exec``, the path of ``ws exec``):

* disk: ``dd oflag=direct`` with disk_mbps 10 writes at most 12 MB/s, the unlimited
  guest faster; a live change to 5 MB/s holds at once;
* CPU: a busy loop in a cpu_percent 25 guest does at most 35 % of the unlimited one's
  work in the same seconds (both at once);
* network: iperf3 between the two with net_mbps 20 lands within 25 % of 20 Mbit/s,
  both directions (outbound: the tap's ingress policer; inbound: its HTB class).

Boots (and the CPU measurement) hold ``/tmp/ws-realvm.lock``. The numbers measured are
printed (``-s``) and recorded in docs/design/limits.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed")

import libvirt

import agent.virt.netshape as netshape
from agent.virt.base import DiskSpec, DomainSpec, NicSpec, tap_name
from agent.virt.libvirt_driver import LibvirtDriver
from tests.host.conftest import unique_name
from tests.host.realsite import realvm_lock
from workspace.config import LibvirtConfig
from workspace.domain.model import ExecOutcome
from workspace.domain.netpolicy import Limits
from workspace.errors import FailedPrecondition
from workspace.site.hostenv import HostEnv

# TCG boots on a shared machine can outlast the suite's default 300 s per test,
# which pytest-timeout charges the module's fixture to the first test.
pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]

APPLIANCE = Path(os.environ.get("WS_CLOUD_APPLIANCE", "/var/tmp/ws-cloud-appliance"))
AGENT_WAIT_S = 300.0
BRIDGE = "wsbr0"
LIMITED = Limits(cpu_percent=25, disk_mbps=10, net_mbps=20)


@dataclass
class Guest:
    wid: str
    ip: str
    limits: Limits


def sh(driver: LibvirtDriver, guest: Guest, script: str, timeout_s: float = 120) -> str:
    got: ExecOutcome = driver.exec(guest.wid, ["sh", "-c", script], b"", timeout_s)
    assert got.exit_code == 0, (script, got.stdout, got.stderr)
    return got.stdout.decode()


def wait_agent(driver: LibvirtDriver, wid: str, deadline: float) -> None:
    while True:
        try:
            driver.exec(wid, ["true"], b"", 30)
            return
        except FailedPrecondition:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


class Node:
    """A node (netns + private libvirtd + bridge) with guests booted from the appliance."""

    def __init__(self) -> None:
        record = APPLIANCE / "cloud-appliance.json"
        if not record.exists():
            pytest.skip(f"no cloud appliance at {APPLIANCE} (python -m images.appliance --cloud)")
        self.meta = json.loads(record.read_text())
        self.dir = Path(tempfile.mkdtemp(prefix="ws-limits-", dir="/var/tmp"))
        self.dir.chmod(0o755)
        self.env = HostEnv(self.dir / "node", unique_name("wsns-"))
        self.driver: LibvirtDriver | None = None
        self.guests: list[Guest] = []

    def up(self) -> LibvirtDriver:
        self.env.up()
        ns = ["ip", "-n", self.env.netns]
        subprocess.run([*ns, "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run([*ns, "link", "set", BRIDGE, "up"], check=True)
        self.driver = LibvirtDriver(
            LibvirtConfig(uri=self.env.libvirt_uri, virt_type="qemu"), str(self.dir / "state")
        )
        return self.driver

    def boot(self, guests: list[Guest]) -> None:
        assert self.driver is not None
        boot = self.dir / "boot"
        boot.mkdir()
        # Copies: libvirt chowns what it gives QEMU (backing files too) while it runs.
        for name in ("kernel", "initrd", "root"):
            shutil.copyfile(self.meta[name], boot / name)
            (boot / name).chmod(0o644)
        for i, g in enumerate(guests):
            disk = self.dir / f"{g.wid}.qcow2"
            create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]
            subprocess.run([*create, str(boot / "root"), str(disk)], check=True)
            spec = DomainSpec(
                workspace_id=g.wid,
                name=g.wid,
                cpus=1,
                memory_mib=768,
                disks=(DiskSpec(str(disk), "qcow2", "vda"),),
                nics=(NicSpec(f"52:54:00:77:00:{i + 1:02x}", BRIDGE, g.ip, tap_name(g.wid, 0)),),
                kernel=str(boot / "kernel"),
                initrd=str(boot / "initrd"),
                cmdline=str(self.meta["cmdline"]),
                console_log=str(self.dir / f"{g.wid}.console.log"),
                hostname=g.wid,
                limits=g.limits,
            )
            self.driver.define(spec)
            self.guests.append(g)
        started = time.monotonic()
        for g in guests:
            self.driver.start(g.wid)
        for g in guests:
            wait_agent(self.driver, g.wid, started + AGENT_WAIT_S)
        print(f"\n{len(guests)} guests answered {time.monotonic() - started:.0f} s after start")
        for g in guests:
            # The appliance's own DHCP finds no server on this bridge: a static address.
            sh(
                self.driver,
                g,
                "dev=$(ls /sys/class/net | grep -v '^lo$' | head -1); "
                f"ip addr add {g.ip}/24 dev $dev && ip link set $dev up",
            )

    def down(self) -> None:
        if self.driver is not None:
            for g in self.guests:
                with contextlib.suppress(Exception):
                    self.driver.undefine(g.wid)
            self.driver.close()
        self.env.down()
        if os.environ.get("WS_KEEP_SITE"):
            print(f"\nkept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[LibvirtDriver, Guest, Guest]]:
    n = Node()
    # Defined with its disk and network limits; the CPU limit comes live once it has
    # booted (a quarter of a TCG CPU would make the boot four times as long), which
    # also exercises the live path the agent takes after `ws update`.
    slow = Guest(f"lim-{os.getpid()}-a", "10.213.0.21", replace(LIMITED, cpu_percent=0))
    fast = Guest(f"lim-{os.getpid()}-b", "10.213.0.22", Limits())
    try:
        with pytest.MonkeyPatch.context() as mp:
            # The agent runs in its node's namespace, where the taps are; this test does
            # not, so the driver's nft goes there explicitly.
            def apply_in_node(taps: dict[str, int]) -> None:
                subprocess.run(
                    ["ip", "netns", "exec", n.env.netns, "nft", "-f", "-"],
                    input=netshape.ruleset(taps),
                    text=True,
                    check=True,
                )

            mp.setattr(netshape, "apply", apply_in_node)
            with realvm_lock():
                driver = n.up()
                n.boot([slow, fast])
            driver.set_limits(slow.wid, LIMITED)
            slow.limits = LIMITED
            yield driver, slow, fast
    finally:
        n.down()


def dd_mbps(driver: LibvirtDriver, guest: Guest, mb: int) -> float:
    """MB/s (10^6) of a direct-I/O write of ``mb`` MiB, timed by dd itself."""
    out = sh(
        driver,
        guest,
        f"dd if=/dev/zero of=/var/tmp/x bs=1M count={mb} oflag=direct 2>&1; rm -f /var/tmp/x",
    )
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", out, re.M)
    assert m, out
    return int(m[1]) / float(m[2]) / 1e6


def test_disk_limit_and_a_live_change(node: tuple[LibvirtDriver, Guest, Guest]) -> None:
    driver, slow, fast = node
    limited = dd_mbps(driver, slow, 40)
    free = dd_mbps(driver, fast, 40)
    print(f"\ndd oflag=direct: disk_mbps 10 -> {limited:.1f} MB/s, unlimited {free:.1f} MB/s")
    assert limited <= 12.0
    assert free > limited * 1.5

    driver.set_limits(slow.wid, replace(LIMITED, disk_mbps=5))
    info = driver.get(slow.wid)
    assert info is not None and info.limits.disk_mbps == 5  # type: ignore[union-attr]
    changed = dd_mbps(driver, slow, 20)
    print(f"dd after a live change to disk_mbps 5: {changed:.1f} MB/s")
    assert changed <= 6.0
    # ... and in the persistent definition too.
    conn = libvirt.open(driver.connection.uri)
    try:
        xml = conn.lookupByName(f"ws-{slow.wid}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    assert "<total_bytes_sec>5000000</total_bytes_sec>" in xml
    driver.set_limits(slow.wid, LIMITED)


def vcpu_seconds(wid: str) -> float:
    """CPU seconds (user + system) the domain's vCPU threads used so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"guest=ws-{wid}," not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            for task in (proc / "task").iterdir():
                if (task / "comm").read_text().startswith("CPU "):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            continue
    return total


LOOP = "python3 -c 'import time\nt=time.time()+{s}\nn=0\nwhile time.time()<t: n+=1\nprint(n)'"


def test_cpu_percent_caps_a_busy_guest(node: tuple[LibvirtDriver, Guest, Guest]) -> None:
    driver, slow, fast = node
    # What libvirt applied to the running domain (the cgroup's CFS quota).
    conn = libvirt.open(driver.connection.uri)
    try:
        dom = conn.lookupByName(f"ws-{slow.wid}")
        params = dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    finally:
        conn.close()
    assert params["vcpu_quota"] == 25000 and params["vcpu_period"] == 100000
    seconds = 15
    counts: dict[str, int] = {}

    def loop(g: Guest) -> None:
        counts[g.wid] = int(sh(driver, g, LOOP.format(s=seconds), seconds + 60).strip())

    with realvm_lock():  # nobody else's boot eats the unlimited guest's CPU meanwhile
        threads = [threading.Thread(target=loop, args=(g,)) for g in (slow, fast)]
        before = {g.wid: vcpu_seconds(g.wid) for g in (slow, fast)}
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        share = {g.wid: (vcpu_seconds(g.wid) - before[g.wid]) / wall for g in (slow, fast)}
    ratio = counts[slow.wid] / counts[fast.wid]
    print(
        f"\nbusy loop {seconds} s: cpu_percent 25 did {ratio:.0%} of the unlimited's work; "
        f"host CPU of the vCPU threads: limited {share[slow.wid]:.0%}, "
        f"unlimited {share[fast.wid]:.0%} of a CPU"
    )
    # The cap itself, measured on the host: a quarter of a CPU (plus the guest agent's
    # own start-up around the loop).
    assert share[slow.wid] <= 0.30
    # The work done, relative to a guest that got what the host had left: the host is
    # shared (two cores, other VMs), so the unlimited one may get less than a whole CPU;
    # per CPU-second it got, the limited one did at most 35 % as much.
    assert ratio * share[fast.wid] <= 0.35

    # Removing the limit live sets the quota back to none (a negative quota: no limit).
    driver.set_limits(slow.wid, replace(LIMITED, cpu_percent=0))
    conn = libvirt.open(driver.connection.uri)
    try:
        dom = conn.lookupByName(f"ws-{slow.wid}")
        assert dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)["vcpu_quota"] < 0
        assert dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG)["vcpu_quota"] <= 0
    finally:
        conn.close()
    driver.set_limits(slow.wid, LIMITED)


def iperf_mbps(driver: LibvirtDriver, client: Guest, server: Guest, reverse: bool) -> float:
    flags = "-R " if reverse else ""
    out = sh(driver, client, f"iperf3 -c {server.ip} -t 10 -J {flags}", 90)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6


def test_net_mbps_shapes_both_ways(node: tuple[LibvirtDriver, Guest, Guest]) -> None:
    driver, slow, fast = node
    sh(driver, fast, "iperf3 -s -D")
    sh(driver, slow, f"ping -c 2 -W 5 {fast.ip}")
    out = iperf_mbps(driver, slow, fast, reverse=False)  # from the limited guest
    into = iperf_mbps(driver, slow, fast, reverse=True)  # to it
    print(f"\niperf3 10 s, net_mbps 20: from the guest {out:.1f}, to it {into:.1f} Mbit/s")
    assert abs(out - 20) <= 5
    assert abs(into - 20) <= 5
