"""End to end on real VMs: a 2-node site on one machine, and a virtual cluster across it.

`ws-admin site up --driver libvirt --nodes 2` starts one service and two agents
(nodes local-1 and local-2), each node in a network namespace of its own with its own
private libvirtd, bridge (wsbr0 in both, as on real hosts) and dnsmasq. A 3-member
cluster with soft anti-affinity must land on both nodes (2 + 1) and boot for real;
hard anti-affinity with 3 members on 2 nodes must be refused whole; destroying the
cluster must leave nothing on either node.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from images.appliance import Appliance
from tests.functional.harness import WS, Stubs, wait_for
from tests.host.test_e2e_site import run as site_run
from workspace import rpc
from workspace.client import resolve_tls
from workspace.site.hostenv import HostEnv, netns_exists, pid_netns_inode
from workspace.v1 import admin_pb2, clusters_pb2, clusters_pb2_grpc, workspaces_pb2

pytestmark = pytest.mark.host
BOOT_S = 120.0  # three TCG boots at once on two cores; ~7 s each alone
NODES = ("local-1", "local-2")


# `python -m MODULE ARGS` from the repository; the tests look at the exit code themselves.
run = functools.partial(site_run, check=False)


class ClusterSite:
    def __init__(self, site_dir: Path) -> None:
        self.dir = site_dir
        self.record: dict[str, object] = {}
        self.stubs: Stubs | None = None
        self.clusters: clusters_pb2_grpc.ClustersStub | None = None

    def up(self, *extra: str) -> None:
        out = run("workspace.cli.admin", "site", "up", "--dir", str(self.dir), *extra)
        assert out.returncode == 0, out.stderr + out.stdout
        self.record = json.loads((self.dir / "site.json").read_text())
        if self.stubs is None:
            address = str(self.record["address"])
            self.stubs = Stubs(rpc.channel(address, resolve_tls(address)))
            self.clusters = clusters_pb2_grpc.ClustersStub(self.stubs.channel)

    @property
    def agents(self) -> dict[str, dict[str, object]]:
        return {str(a["node"]): a for a in self.record["agents"]}  # type: ignore[attr-defined]

    def node_dir(self, node: str) -> Path:
        return Path(str(self.agents[node]["dir"]))

    def virsh(self, node: str, *args: str) -> str:
        uri = HostEnv(self.node_dir(node), str(self.agents[node]["netns"])).libvirt_uri
        return subprocess.run(
            ["virsh", "-c", uri, *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    def domains(self, node: str) -> list[str]:
        return [n for n in self.virsh(node, "list", "--all", "--name").split() if n]

    def console(self, wid: str) -> str:
        assert self.stubs is not None
        req = workspaces_pb2.GetConsoleRequest(id=wid)
        return self.stubs.ws.GetConsole(req).data.decode(errors="replace")

    def ready_lines(self, wid: str) -> list[str]:
        return re.findall(r"WORKSPACE-READY ip=\S+ hostname=\S+", self.console(wid))

    def cluster(self, ref: str) -> clusters_pb2.Cluster:
        assert self.clusters is not None
        return self.clusters.GetCluster(clusters_pb2.ClusterRef(id=ref))

    def allocated(self) -> int:
        assert self.stubs is not None
        nets = self.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
        return sum(n.allocated for n in nets)


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[ClusterSite]:
    site_dir = Path(tempfile.mkdtemp(prefix="ws-e2c-", dir="/var/tmp"))
    site_dir.chmod(0o755)  # dnsmasq (as nobody) reads hosts files below it
    s = ClusterSite(site_dir)
    try:
        s.up("--driver", "libvirt", "--nodes", "2")
        out = run(
            "workspace.cli.admin",
            "--service",
            str(s.record["address"]),
            "image",
            "import",
            "appliance",
            "--appliance",
            str(appliance.manifest.parent),
        )
        assert out.returncode == 0, out.stderr
        yield s
    finally:
        run("workspace.cli.admin", "site", "down", "--dir", str(site_dir))
        if s.stubs is not None:
            s.stubs.channel.close()
        if os.environ.get("WS_KEEP_SITE"):
            print(f"\nkept site directory {site_dir}")
        else:
            shutil.rmtree(site_dir, ignore_errors=True)


def gone(pid: int) -> bool:
    """The process has ended (a zombie counts: PID 1 here does not reap orphans)."""
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    except FileNotFoundError:
        return True


def members(*roles: tuple[str, int]) -> list[clusters_pb2.ClusterMember]:
    return [
        clusters_pb2.ClusterMember(role=role, image="appliance", memory_mib=256, count=count)
        for role, count in roles
    ]


def test_two_nodes_each_in_its_own_namespace(site: ClusterSite) -> None:
    assert site.stubs is not None
    agents = site.agents
    assert sorted(agents) == list(NODES)
    netns = {str(a["netns"]) for a in agents.values()}
    assert len(netns) == 2 and all(netns_exists(n) for n in netns)
    assert len({site.node_dir(n) for n in NODES}) == 2
    # every agent runs in its node's namespace; the service in none of them
    for node, agent in agents.items():
        inode = os.stat(f"/run/netns/{agent['netns']}").st_ino
        assert pid_netns_inode(int(str(agent["pid"]))) == inode, node
    svc_ns = pid_netns_inode(int(str(site.record["service_pid"])))
    assert svc_ns not in {os.stat(f"/run/netns/{n}").st_ino for n in netns}
    listed = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    assert {n.name: n.state for n in listed} == dict.fromkeys(NODES, admin_pb2.NODE_STATE_READY)
    status = json.loads(
        run("workspace.cli.admin", "-o", "json", "site", "status", "--dir", str(site.dir)).stdout
    )
    assert status["state"] == "running"
    assert [(a["node"], a["state"], a["running"]) for a in status["agents"]] == [
        (n, "READY", True) for n in NODES
    ]


def test_soft_anti_affinity_cluster_spreads_and_boots(site: ClusterSite) -> None:
    assert site.clusters is not None and site.stubs is not None
    t0 = time.monotonic()
    c = site.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="c1",
            members=members(("head", 1), ("worker", 2)),
            affinity=clusters_pb2.AFFINITY_SOFT_ANTI,
        )
    )
    assert len(c.members) == 3
    per_node = collections.Counter(m.node for m in c.members)
    assert set(per_node) == set(NODES) and sorted(per_node.values()) == [1, 2]
    ips = [m.nics[0].ip for m in c.members]
    assert len(set(ips)) == 3 and site.allocated() == 3

    c = wait_for(
        lambda: (x := site.cluster("c1")).state == clusters_pb2.CLUSTER_STATE_RUNNING and x,
        BOOT_S,
        "the cluster to be RUNNING",
    )
    assert all(m.state == WS.WORKSPACE_STATE_RUNNING for m in c.members)
    for m in c.members:  # each domain exists on its own node only
        other = next(n for n in NODES if n != m.node)
        assert f"ws-{m.id}" in site.domains(m.node)
        assert f"ws-{m.id}" not in site.domains(other)
    for m in c.members:
        line = wait_for(functools.partial(site.ready_lines, m.id), BOOT_S, f"READY of {m.name}")[0]
        assert line == f"WORKSPACE-READY ip={m.nics[0].ip} hostname={m.name}"
    print(f"\ncluster of 3 created and booted on 2 nodes in {time.monotonic() - t0:.1f} s")


def test_hard_anti_affinity_beyond_the_nodes_is_refused_whole(site: ClusterSite) -> None:
    assert site.clusters is not None and site.stubs is not None
    before = site.allocated()
    with pytest.raises(grpc.RpcError) as info:
        site.clusters.CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="c2",
                members=members(("head", 1), ("worker", 2)),
                affinity=clusters_pb2.AFFINITY_HARD_ANTI,
            )
        )
    err: grpc.RpcError = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert re.search(r"member c2-(head|worker)-\d+ does not fit", str(err.details())), err.details()
    assert "anti-affinity" in str(err.details())
    # nothing is left of it: no cluster, no member, no address, no domain
    listed = site.clusters.ListClusters(clusters_pb2.ListClustersRequest(include_terminated=True))
    assert [c.name for c in listed.clusters] == ["c1"]
    names = [
        w.name
        for w in site.stubs.ws.ListWorkspaces(
            workspaces_pb2.ListWorkspacesRequest(include_terminated=True)
        ).workspaces
    ]
    assert not [n for n in names if n.startswith("c2-")]
    assert site.allocated() == before
    assert sum(len(site.domains(n)) for n in NODES) == 3


def test_site_up_restarts_only_the_missing_agent(site: ClusterSite) -> None:
    assert site.stubs is not None
    c = site.cluster("c1")
    boots = {m.id: len(site.ready_lines(m.id)) for m in c.members}
    before = site.agents
    service_pid = site.record["service_pid"]
    os.kill(int(str(before["local-2"]["pid"])), signal.SIGKILL)
    time.sleep(0.5)
    site.up()  # starts what is not running: local-2's agent
    after = site.agents
    assert site.record["service_pid"] == service_pid
    assert after["local-1"]["pid"] == before["local-1"]["pid"]
    assert after["local-2"]["pid"] not in (0, before["local-2"]["pid"])
    time.sleep(3)  # let the restarted agent reconcile a few times
    assert site.cluster("c1").state == clusters_pb2.CLUSTER_STATE_RUNNING
    assert {m.id: len(site.ready_lines(m.id)) for m in c.members} == boots  # not rebooted


def test_destroy_cluster_leaves_nothing_on_either_node(site: ClusterSite) -> None:
    assert site.clusters is not None and site.stubs is not None
    c = site.cluster("c1")
    macs = [m.nics[0].mac.lower() for m in c.members]
    assert len(macs) == 3
    site.clusters.DestroyCluster(clusters_pb2.ClusterRef(id=c.id))
    c = wait_for(
        lambda: (x := site.cluster(c.id)).state == clusters_pb2.CLUSTER_STATE_TERMINATED and x,
        60,
        "the cluster to be TERMINATED",
    )
    assert all(m.state == WS.WORKSPACE_STATE_TERMINATED for m in c.members)
    for node in NODES:
        assert site.domains(node) == []
        work = site.node_dir(node) / "agent" / "workspaces"
        assert not [m.name for m in c.members if (work / m.id).exists()]
        hosts = "".join(f.read_text() for f in (site.node_dir(node) / "agent").glob("dhcp/*/hosts"))
        assert not [mac for mac in macs if mac in hosts.lower()]
    assert site.allocated() == 0


def test_site_down_stops_every_node(site: ClusterSite) -> None:
    assert site.stubs is not None
    site.stubs.create(name="leftover", image="appliance", memory_mib=256)
    agents = site.agents
    pids = [int(str(site.record["service_pid"]))] + [int(str(a["pid"])) for a in agents.values()]
    daemons = [
        int(p.read_text())
        for node in NODES
        for p in (site.node_dir(node) / "libvirt" / "pids").glob("*.pid")
    ]
    assert len(daemons) == 4  # a virtlogd and a libvirtd per node
    out = run("workspace.cli.admin", "site", "down", "--dir", str(site.dir))
    assert out.returncode == 0, out.stderr
    for pid in pids + daemons:
        assert gone(pid), pid
    for agent in agents.values():
        assert not netns_exists(str(agent["netns"]))
    assert not (site.dir / "site.json").exists()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fake_driver_site_of_three_nodes(tmp_path: Path) -> None:
    """--nodes with the fake driver: N agents, no namespace; up/status/down per node."""
    d = tmp_path / "site"
    out = run("workspace.cli.admin", "site", "up", "--dir", str(d), "--nodes", "3")
    assert out.returncode == 0, out.stderr
    try:
        rec = json.loads((d / "site.json").read_text())
        agents = rec["agents"]
        assert [a["node"] for a in agents] == ["local-1", "local-2", "local-3"]
        assert not any(a["netns"] for a in agents) and rec["netns"] == ""
        assert (rec["node"], rec["agent_pid"]) == ("local-1", agents[0]["pid"])
        assert len({a["dir"] for a in agents}) == 3
        for a in agents:  # what up printed names every node's agent and its log
            assert f"pid {a['pid']}  node {a['node']}  (log {a['dir']}/agent.log)" in out.stdout
        # nothing others may read or list: directories traverse-only (QEMU crosses them),
        # configs, logs and records the owner's; only certificates and sockets are open
        assert {mode(p) for p in (d, d / "nodes", *(Path(a["dir"]) for a in agents))} == {0o711}
        files = ("service.toml", "service.log", "site.json", "setup.json", "site.lock")
        for p in (d / name for name in files):
            assert mode(p) == 0o600, p
        for a in agents:
            assert mode(Path(a["dir"], "agent.toml")) == mode(Path(a["dir"], "agent.log")) == 0o600
        readable = [
            p
            for p in d.rglob("*")
            if p.stat().st_mode & 0o006 and not (p.suffix == ".pem" or p.is_socket())
        ]
        assert readable == []
        for a in agents:
            assert f'state_dir = "{a["dir"]}/agent"' in Path(a["dir"], "agent.toml").read_text()
        # another node count while it runs is refused; the same (or none) is "already running"
        refused = run("workspace.cli.admin", "site", "up", "--dir", str(d), "--nodes", "2")
        assert refused.returncode != 0 and "3 node(s)" in refused.stderr
        again = run("workspace.cli.admin", "site", "up", "--dir", str(d))
        assert again.returncode == 0 and "already running" in again.stdout
        # one agent dies: status says so; up starts that one only
        os.kill(agents[1]["pid"], signal.SIGKILL)
        wait_for(functools.partial(gone, agents[1]["pid"]), 10, "the agent to die")
        st = run("workspace.cli.admin", "-o", "json", "site", "status", "--dir", str(d))
        status = json.loads(st.stdout)
        assert st.returncode != 0 and status["state"] == "degraded"
        assert [a["running"] for a in status["agents"]] == [True, False, True]
        out = run("workspace.cli.admin", "site", "up", "--dir", str(d))
        assert out.returncode == 0, out.stderr
        new = json.loads((d / "site.json").read_text())
        assert new["service_pid"] == rec["service_pid"]
        pids = [a["pid"] for a in new["agents"]]
        assert pids[0] == agents[0]["pid"] and pids[2] == agents[2]["pid"]
        assert pids[1] != agents[1]["pid"]
        st = run("workspace.cli.admin", "-o", "json", "site", "status", "--dir", str(d))
        assert [a["state"] for a in json.loads(st.stdout)["agents"]] == ["READY"] * 3
    finally:
        down = run("workspace.cli.admin", "site", "down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    for pid in [new["service_pid"], *pids]:
        assert wait_for(functools.partial(gone, pid), 10, f"pid {pid} to end")
    assert not (d / "site.json").exists()
