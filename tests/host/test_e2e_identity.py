"""End to end on real VMs with mutual TLS on every hop.

`ws-admin site up --driver libvirt --nodes 2` makes the site's CA and issues the
service, both nodes and the admin their identities; every hop (ws → service, agents →
service, agent → agent for peer fetch) is mutual TLS. A user identity issued with
`ws-admin pki issue user` drives a workspace through `ws`; its blob then reaches the
other node from the first one's peer server (the peer logs the node name it read from
the caller's certificate); node local-2's certificate cannot stream local-1's orders.
One VM runs at a time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from images.appliance import Appliance
from tests.functional.harness import wait_for
from tests.host.test_e2e_site import BOOT_S, run
from workspace import config, pki, rpc
from workspace.config import AgentConfig, TlsConfig
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.v1 import workspaces_pb2, workspaces_pb2_grpc

pytestmark = pytest.mark.host
NODES = ("local-1", "local-2")
ROOT = Path(__file__).resolve().parents[2]

cli = functools.partial(run, check=False)


@dataclass
class IdSite:
    dir: Path
    address: str
    alice: Path

    def ws(self, *args: str, identity: Path | None = None) -> str:
        who = ["--identity", str(identity or self.alice)]
        out = cli("workspace.cli.ws", "--service", self.address, *who, *args)
        assert out.returncode == 0, f"ws {' '.join(args)}: {out.stderr}"
        return out.stdout

    def admin(self, *args: str) -> str:
        out = cli("workspace.cli.admin", "--service", self.address, *args)
        assert out.returncode == 0, f"ws-admin {' '.join(args)}: {out.stderr}"
        return out.stdout

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    def agent_log(self, node: str) -> str:
        return (self.node_dir(node) / "agent.log").read_text(errors="replace")

    def console(self, wid: str) -> str:
        """The console of alice's workspace ``wid``, read as alice."""
        ch = rpc.channel(self.address, TlsConfig(identity_dir=str(self.alice)))
        try:
            stub = workspaces_pb2_grpc.WorkspacesStub(ch)
            req = workspaces_pb2.GetConsoleRequest(id=wid)
            return stub.GetConsole(req, timeout=10).data.decode(errors="replace")
        finally:
            ch.close()


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[IdSite]:
    site_dir = Path(tempfile.mkdtemp(prefix="ws-eid-", dir="/var/tmp"))
    site_dir.chmod(0o755)  # dnsmasq (as nobody) reads hosts files below it
    users = Path(tempfile.mkdtemp(prefix="ws-eid-users-", dir="/var/tmp"))
    try:
        out = cli(
            "workspace.cli.admin", "site", "up", "--driver", "libvirt", "--nodes", "2",
            "--dir", str(site_dir),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + out.stdout
        address = json.loads((site_dir / "site.json").read_text())["address"]
        alice = users / "alice"
        out = cli(
            "workspace.cli.admin", "pki", "issue", "user", "alice", "--out", str(alice),
            "--dir", str(site_dir / "pki"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        s = IdSite(site_dir, address, alice)
        s.admin("image", "import", "appliance", "--appliance", str(appliance.manifest.parent))
        yield s
    finally:
        cli("workspace.cli.admin", "site", "down", "--dir", str(site_dir))
        if os.environ.get("WS_KEEP_SITE"):
            print(f"\nkept site directory {site_dir}")
        else:
            shutil.rmtree(site_dir, ignore_errors=True)
        shutil.rmtree(users, ignore_errors=True)


def test_every_hop_is_configured_for_mutual_tls(site: IdSite) -> None:
    svc = (site.dir / "service.toml").read_text()
    assert "insecure = false" in svc and f'crl_file = "{site.dir}/pki/crl.pem"' in svc
    for node in NODES:
        conf = (site.node_dir(node) / "agent.toml").read_text()
        assert "insecure = false" in conf and f"identities/node-{node}" in conf
        assert f'peer_listen = "unix:{site.node_dir(node)}/peers.sock"' in conf
    # a caller without a certificate is not let in
    plain = rpc.channel(site.address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            nodes_pb2_grpc.NodesStub(plain).Register(nodes_pb2.RegisterRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()


def create(site: IdSite, name: str) -> dict[str, object]:
    """``ws create --wait`` as alice; the workspace as JSON."""
    args = ["-o", "json", "create", "--image", "appliance", "--name", name]
    args += ["--memory-mib", "256", "--wait", "--timeout", str(int(BOOT_S))]
    out: dict[str, object] = json.loads(site.ws(*args))
    return out


def test_a_user_runs_a_vm_and_the_next_node_fetches_its_blob_from_a_peer(site: IdSite) -> None:
    a1 = create(site, "a1")
    assert a1["state"] == "RUNNING"
    first = str(a1["node"])
    other = next(n for n in NODES if n != first)
    line = wait_for(
        lambda: re.findall(r"WORKSPACE-READY ip=\S+ hostname=a1", site.console(str(a1["id"]))),
        BOOT_S,
        "the READY line of a1",
    )[0]
    assert line == f"WORKSPACE-READY ip={a1['nics'][0]['ip']} hostname=a1"
    assert [w["name"] for w in json.loads(site.ws("-o", "json", "list"))] == ["a1"]
    site.ws("destroy", "a1", "--wait", "--timeout", "60")

    # the next one must land on the other node, whose cache is empty: from the peer
    site.admin("node", "drain", first)
    try:
        a2 = create(site, "a2")
        assert a2["node"] == other and a2["state"] == "RUNNING"
        served = re.findall(r"serving sha256:\S+ from byte \d+ to (.*)", site.agent_log(first))
        assert served and all(s == f"node {other} (certificate)" for s in served), served
        cached = re.findall(
            r"cached blob sha256:\S+ \(\d+ bytes\) from (\S+)", site.agent_log(other)
        )
        assert cached and set(cached) == {"peer"}, cached
        site.ws("destroy", "a2", "--wait", "--timeout", "60")
    finally:
        site.admin("node", "enable", first)


def test_peers_refuse_a_user_certificate(site: IdSite) -> None:
    digest = "sha256:" + "0" * 64
    ch = rpc.channel(
        f"unix:{site.node_dir('local-1')}/peers.sock",
        TlsConfig(identity_dir=str(site.alice)),
        node="local-1",
    )
    try:
        req = nodes_pb2.FetchBlobRequest(node="local-2", digest=digest)
        with pytest.raises(grpc.RpcError) as err:
            list(nodes_pb2_grpc.PeersStub(ch).FetchBlob(req, timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only to node identities" in (err.value.details() or "")
    finally:
        ch.close()


def test_node_2_cannot_stream_node_1s_assignments(site: IdSite) -> None:
    n2 = site.dir / "identities" / "node-local-2"
    assert pki.identity_of_dir(n2).name == "local-2"
    # The Nodes API has a server of its own, next to the client API.
    ch = rpc.channel(config.node_address_for(site.address), TlsConfig(identity_dir=str(n2)))
    try:
        stream = nodes_pb2_grpc.NodesStub(ch).WatchAssignments(
            nodes_pb2.WatchAssignmentsRequest(node="local-1"), timeout=10
        )
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stream))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        ch.close()


def run_virsh(site: IdSite, node: str, *args: str) -> str:
    """virsh on ``node``'s own libvirtd (its URI from the node's agent.toml)."""
    uri = config.load(AgentConfig, site.node_dir(node) / "agent.toml").libvirt.uri
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def issue_user(site: IdSite, name: str, *extra: str) -> Path:
    out_dir = site.alice.parent / name
    out = cli(
        "workspace.cli.admin", "pki", "issue", "user", name, *extra, "--out", str(out_dir),
        "--dir", str(site.dir / "pki"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out_dir


def ws_as(site: IdSite, identity: Path, *args: str) -> tuple[int, str, str]:
    out = cli("workspace.cli.ws", "--service", site.address, "--identity", str(identity), *args)
    return out.returncode, out.stdout, out.stderr


def test_another_user_neither_sees_nor_touches_and_a_revoked_one_is_refused_at_once(
    site: IdSite,
) -> None:
    a3 = create(site, "a3")
    bob = issue_user(site, "bob")
    try:
        code, out, _ = ws_as(site, bob, "-o", "json", "list")
        assert code == 0 and json.loads(out) == []
        for args in (("show", str(a3["id"])), ("show", "a3"), ("destroy", "a3"), ("stop", "a3")):
            code, _, err = ws_as(site, bob, *args)
            assert code == 1 and "no workspace" in err, (args, err)
        assert json.loads(site.ws("-o", "json", "show", "a3"))["state"] == "RUNNING"
        # revoked: refused on the very next call, without restarting anything
        site.admin("pki", "revoke", "bob", "--dir", str(site.dir / "pki"))
        code, _, err = ws_as(site, bob, "list")
        assert code != 0 and "revoked" in err, err
    finally:
        site.ws("destroy", "a3", "--wait", "--timeout", "60")


def test_a_quota_refusal_leaves_nothing_and_a_lease_stops_a_real_vm(site: IdSite) -> None:
    site.admin("project", "create", "lab", "--quota", "instances=1", "--on-expiry", "stop")
    carol = issue_user(site, "carol", "--project", "lab")
    before = json.loads(site.admin("-o", "json", "node", "list"))
    code, out, err = ws_as(
        site, carol, "-o", "json", "create", "--image", "appliance", "--name", "c1",
        "--memory-mib", "256", "--lease", "20s", "--wait", "--timeout", str(int(BOOT_S)),
    )  # fmt: skip
    assert code == 0, err
    c1 = json.loads(out)
    assert c1["state"] == "RUNNING" and c1["project"] == "lab"
    try:
        code, _, err = ws_as(site, carol, "create", "--image", "appliance", "--name", "c2")
        assert code == 1 and "instances quota of project lab" in err, err
        code, out, _ = ws_as(site, carol, "-o", "json", "list")
        assert [w["name"] for w in json.loads(out)] == ["c1"]  # nothing half-made
        after = json.loads(site.admin("-o", "json", "node", "list"))
        # one more workspace placed (c1), no claim left by the refused c2
        assert sum(int(n.get("workspaces", 0)) for n in after) == 1 + sum(
            int(n.get("workspaces", 0)) for n in before
        )

        # the lease ends: the service stops the workspace and its node shuts the VM off
        def stopped() -> dict[str, object] | None:
            code, out, _ = ws_as(site, carol, "-o", "json", "show", "c1")
            w: dict[str, object] = json.loads(out)
            return w if code == 0 and w["state"] == "STOPPED" else None

        w = wait_for(stopped, 240, "c1 stopped by its lease")
        assert w["desired_state"] == "STOPPED"
        assert "shut off" in run_virsh(site, str(c1["node"]), "domstate", f"ws-{c1['id']}")
    finally:
        ws_as(site, carol, "destroy", "c1", "--wait", "--timeout", "60")
