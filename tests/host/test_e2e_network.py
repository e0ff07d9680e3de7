"""Issue 12 end to end, as a new user would see it: networks a site can trust, and the
resources a VM was promised, on real VMs on a local site of two nodes.

`ws-admin site up --driver libvirt --nodes 2` (two nodes, each its own network namespace
and libvirtd, joined by the site's switch namespace), the cloud appliance pushed with
`ws image push`, then, booted at once and shared by the module (6 VMs):

* a 4-member cluster `--connectivity cluster --affinity soft-anti` (2 + 2 over the nodes);
* an outsider (`open`);
* an `outbound` workspace with `--disk-mbps 10 --net-mbps 20` (and `--cpu-percent 25`
  given with `ws update` once it has booted: a quarter of a TCG CPU would quadruple
  its boot).

Everything is observed from inside the guests (`ws exec`, the QEMU guest agent):

* members ping each other, across the nodes too;
* the outsider cannot reach the members, nor the members the outsider;
* a member that takes another member's address gets nothing back through it, while its
  own address keeps working; a forged ARP reply does not change a victim's neighbour
  entry;
* the outbound workspace connects out (to the outsider's HTTP server) but accepts
  nothing coming in, until `ws update --allow tcp/8000` opens exactly that port;
* its limits hold, measured inside the guests against the unlimited outsider: dd
  (`oflag=direct`), iperf3 both ways, and a busy loop whose vCPU thread's CPU is also
  read on the host; a live `ws update --disk-mbps 5 --reset cpu-percent` holds at once
  and reaches the domain's persistent definition.

Boots and the CPU measurement hold /tmp/ws-realvm.lock.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from images import cloud
from tests.host.realsite import CliSite, local_site, realvm_lock, vcpu_seconds

# TCG boots on a shared machine can outlast the suite's default 300 s per test,
# which pytest-timeout charges the module's fixture to the first test.
pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]

CLUSTER = "net"
# Three: two on one node, one on the other (soft anti-affinity on two nodes), which is
# every pair the tests need; each guest more is about 45 s of the module's boot.
MEMBERS = tuple(f"{CLUSTER}-node-{i}" for i in range(3))
OUTSIDER = "outsider"
OUTBOUND = "outbound"
READY_S = 900.0  # five cloud-init boots at once under TCG on two cores
MEMORY = "640"

Proc = subprocess.CompletedProcess[str]


class Site(CliSite):
    def __init__(self, site_dir: Path, home: Path) -> None:
        super().__init__(site_dir, home)
        self.ips: dict[str, str] = {}
        self.macs: dict[str, str] = {}
        self.nodes: dict[str, str] = {}

    def ping(self, name: str, target: str, source: str = "") -> bool:
        via = f"-I {source} " if source else ""
        return self.exec(name, f"ping -c 2 -W 2 {via}{target}").returncode == 0

    def connects(self, name: str, target: str, port: int) -> bool:
        """An HTTP GET from ``name`` to ``target:port`` answers within 5 s."""
        script = (
            "python3 -c 'import urllib.request,sys\n"
            f'urllib.request.urlopen("http://{target}:{port}/", timeout=5).read()\''
        )
        return self.exec(name, script, timeout=30).returncode == 0


def wait_guests(site: Site, names: tuple[str, ...], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    last = ""
    while pending and time.monotonic() < deadline:
        out = site.exec(pending[0], "true", timeout=20)
        if out.returncode == 0:
            pending.pop(0)
            continue
        last = out.stderr
        time.sleep(5)
    assert not pending, f"no guest agent in {pending} after {timeout_s:.0f} s: {last}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    image = cloud.build()
    everyone = (*MEMBERS, OUTSIDER, OUTBOUND)
    with local_site("ws-net") as (site_dir, home):
        s = Site(site_dir, home)
        s.admin("site", "up", "--driver", "libvirt", "--nodes", "2", "--dir", str(site_dir))
        s.ok("image", "push", "cloud", "--manifest", str(image.manifest))
        with realvm_lock():
            member = f"node=cloud,count={len(MEMBERS)},memory-mib={MEMORY}"
            s.ok(
                *("cluster", "create", CLUSTER, "--member", member),
                *("--connectivity", "cluster", "--affinity", "soft-anti"),
            )
            s.ok("create", "--image", "cloud", "--name", OUTSIDER, "--memory-mib", MEMORY)
            s.ok(
                *("create", "--image", "cloud", "--name", OUTBOUND, "--memory-mib", MEMORY),
                *("--connectivity", "outbound", "--disk-mbps", "10", "--net-mbps", "20"),
            )
            wait_guests(s, everyone, READY_S)
        for name in everyone:
            shown = s.show(name)
            nics = shown["nics"]
            assert isinstance(nics, list)
            s.ips[name] = str(nics[0]["ip"])
            s.macs[name] = str(nics[0]["mac"]).lower()
            s.nodes[name] = str(shown["node"])
        yield s


def test_the_site_has_a_switch_and_the_cluster_spans_both_nodes(site: Site) -> None:
    status = json.loads(site.admin("-o", "json", "site", "status", "--dir", str(site.dir)))
    assert status["state"] == "running" and status["switch"]["exists"]
    assert sorted({site.nodes[m] for m in MEMBERS}) == ["local-1", "local-2"]


def test_members_reach_each_other_across_nodes(site: Site) -> None:
    first = MEMBERS[0]
    for other in MEMBERS[1:]:
        assert site.ping(first, site.ips[other]), (first, other, site.nodes)
    far = [m for m in MEMBERS if site.nodes[m] != site.nodes[first]]
    assert far and site.ping(far[0], site.ips[first])


def test_the_outsider_and_the_members_cannot_reach_each_other(site: Site) -> None:
    assert site.ping(OUTSIDER, site.ips[OUTBOUND]) is False  # outbound takes nothing in
    for member in (MEMBERS[0], MEMBERS[1]):
        assert not site.ping(OUTSIDER, site.ips[member])
        assert not site.ping(member, site.ips[OUTSIDER])


def _nic(site: Site, name: str) -> str:
    return site.sh(name, "ls /sys/class/net | grep -v '^lo$' | head -1").strip()


def test_a_stolen_address_gets_nothing_back(site: Site) -> None:
    thief, owner, target = MEMBERS[0], MEMBERS[1], MEMBERS[2]
    dev = _nic(site, thief)
    assert site.ping(thief, site.ips[target])
    site.sh(thief, f"ip addr add {site.ips[owner]}/32 dev {dev}")
    try:
        assert not site.ping(thief, site.ips[target], source=site.ips[owner])
        assert site.ping(thief, site.ips[target], source=site.ips[thief])
    finally:
        site.exec(thief, f"ip addr del {site.ips[owner]}/32 dev {dev}")


FORGE = """
import socket, struct, time
dev, my_mac, claimed_ip, victim_mac, victim_ip = {args!r}
mac = lambda m: bytes.fromhex(m.replace(":", ""))
ip = socket.inet_aton
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2,
                  mac(my_mac), ip(claimed_ip), mac(victim_mac), ip(victim_ip))
frame = mac(victim_mac) + mac(my_mac) + struct.pack("!H", 0x0806) + arp
for _ in range(6):
    s.send(frame)
    time.sleep(0.5)
"""


def test_a_forged_arp_reply_does_not_poison_a_neighbour(site: Site) -> None:
    attacker, claimed, victim = MEMBERS[0], MEMBERS[1], MEMBERS[2]
    assert site.ping(victim, site.ips[claimed])  # the victim knows the real MAC now
    args = (
        _nic(site, attacker),
        site.macs[attacker],
        site.ips[claimed],
        site.macs[victim],
        site.ips[victim],
    )
    site.sh(attacker, "python3 - <<'EOF'\n" + FORGE.format(args=args) + "EOF\n")
    neigh = site.sh(victim, f"ip neigh show {site.ips[claimed]}")
    assert site.macs[claimed] in neigh.lower(), neigh
    assert site.macs[attacker] not in neigh.lower(), neigh


def test_outbound_connects_out_but_takes_nothing_in_until_allowed(site: Site) -> None:
    for name in (OUTSIDER, OUTBOUND):
        for port in (8000, 8001):
            site.sh(
                name,
                f"cd /tmp && (setsid python3 -m http.server {port} >/dev/null 2>&1 &) ; sleep 1",
            )
    assert site.connects(OUTBOUND, site.ips[OUTSIDER], 8000)  # out: yes
    assert not site.connects(OUTSIDER, site.ips[OUTBOUND], 8000)  # in: no
    site.ok("update", OUTBOUND, "--allow", "tcp/8000")
    deadline = time.monotonic() + 60
    while not site.connects(OUTSIDER, site.ips[OUTBOUND], 8000):
        assert time.monotonic() < deadline, "tcp/8000 still closed a minute after the update"
        time.sleep(3)
    assert not site.connects(OUTSIDER, site.ips[OUTBOUND], 8001)  # exactly that port
    assert site.connects(OUTBOUND, site.ips[OUTSIDER], 8001)  # and out still works


def _dd(site: Site, name: str, mb: int) -> float:
    out = site.sh(
        name, f"dd if=/dev/zero of=/var/tmp/x bs=1M count={mb} oflag=direct 2>&1; rm -f /var/tmp/x"
    )
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", out, re.M)
    assert m, out
    return int(m[1]) / float(m[2]) / 1e6


def _virsh(site: Site, name: str, *args: str) -> str:
    """``virsh CMD DOMAIN ARGS`` for the workspace's domain, on its node's libvirtd."""
    record = json.loads((site.dir / "site.json").read_text())
    (node,) = [a for a in record["agents"] if a["node"] == site.nodes[name]]
    uri = f"qemu+unix:///system?socket={node['dir']}/libvirt/run/libvirt-sock"
    domain = f"ws-{site.show(name)['id']}"
    return subprocess.run(
        ["virsh", "-c", uri, args[0], domain, *args[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


def _schedinfo(site: Site, name: str) -> str:
    """``virsh schedinfo`` of the workspace's running domain."""
    return _virsh(site, name, "schedinfo", "--live")


def _quota(site: Site, name: str) -> int | None:
    m = re.search(r"^vcpu_quota\s*:\s*(-?\d+)", _schedinfo(site, name), re.M)
    return int(m[1]) if m else None


def test_limits_hold(site: Site) -> None:
    limited = _dd(site, OUTBOUND, 40)
    free = _dd(site, OUTSIDER, 40)
    print(f"\ndd: disk_mbps 10 -> {limited:.1f} MB/s, unlimited {free:.1f} MB/s")
    assert limited <= 12.0 and free > limited * 1.5

    site.sh(OUTSIDER, "iperf3 -s -D")
    time.sleep(1)
    rates = []
    with realvm_lock():  # nobody else's boot takes the guests' CPU meanwhile
        for flags in ("", "-R"):
            cmd = f"iperf3 -c {site.ips[OUTSIDER]} -t 10 -J {flags}"
            out = site.sh(OUTBOUND, cmd, timeout=90)
            rates.append(float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6)
    print(f"iperf3 net_mbps 20: out {rates[0]:.1f}, in {rates[1]:.1f} Mbit/s")
    assert all(abs(r - 20) <= 5 for r in rates)

    # The same busy loop in the same guest, before the cap and under it: the guest is
    # compared with itself, so neither the other guest's luck on the two shared cores
    # nor its different CPU-second yield enters the figure.
    loop = "python3 -c 'import time\nt=time.time()+12\nn=0\nwhile time.time()<t: n+=1\nprint(n)'"
    vm_id = str(site.show(OUTBOUND)["id"])

    def busy() -> tuple[int, float]:
        """Loop count and the vCPU thread's share of a host CPU meanwhile."""
        with realvm_lock():  # nobody else's boot takes the guest's CPU meanwhile
            before = vcpu_seconds(vm_id)
            t0 = time.monotonic()
            count = int(site.sh(OUTBOUND, loop, timeout=90).strip())
            return count, (vcpu_seconds(vm_id) - before) / (time.monotonic() - t0)

    # The uncapped run is the yardstick: it must have had most of a host CPU. On a host
    # busy with something else for a moment (one CI run: 33 % of a CPU uncapped, so a
    # 25 % cap could not slow it by half) it is measured again, a few times at most.
    for _ in range(3):
        free_count, free_share = busy()
        if free_share >= 0.6:
            break
        time.sleep(5)
    site.ok("update", OUTBOUND, "--cpu-percent", "25")
    deadline = time.monotonic() + 60
    while _quota(site, OUTBOUND) != 25000:
        assert time.monotonic() < deadline, _schedinfo(site, OUTBOUND)
        time.sleep(2)
    capped_count, capped_share = busy()
    ratio = capped_count / free_count
    print(
        f"busy loop: cpu_percent 25 did {ratio:.0%} of its own uncapped work; its vCPU "
        f"thread on the host: {capped_share:.0%} of a CPU capped, {free_share:.0%} before"
    )
    assert capped_share <= 0.30  # the cap measured on the host: the precise check
    # Felt inside the guest: under TCG the work a vCPU does per host CPU-second is not
    # the same throttled and free (one CI run: 24% of a CPU against 95% did 37% of the
    # work), so this bound only says the guest is clearly slowed, as its user would see.
    # It needs a yardstick that had most of a CPU: on a host too busy for that in three
    # tries (one CI run: 39 %, so a 25 % cap could only slow the loop to about 60 %)
    # the comparison says nothing and only the host's measure above holds.
    if free_share >= 0.6:
        assert ratio <= 0.5
    else:
        print(f"busy loop: no in-guest comparison, the uncapped run had {free_share:.0%}")

    # Live changes: a lower disk limit, and the CPU cap back to its default (none).
    site.ok("update", OUTBOUND, "--disk-mbps", "5", "--reset", "cpu-percent")
    deadline = time.monotonic() + 60
    while True:
        quota = _quota(site, OUTBOUND)  # no CFS quota: negative
        persistent = _virsh(site, OUTBOUND, "dumpxml", "--inactive")
        if quota is not None and quota < 0 and "<total_bytes_sec>5000000<" in persistent:
            break
        assert time.monotonic() < deadline, (quota, persistent)
        time.sleep(2)
    changed = _dd(site, OUTBOUND, 20)
    print(f"dd after a live change to disk_mbps 5: {changed:.1f} MB/s")
    assert changed <= 6.0
