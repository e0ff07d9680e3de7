"""Connectivity, allow rules, limits and VLANs from request to order, over the real
service with fake-driver agents: what a create asks for (or the project's and site's
defaults) is shown and reaches the node's order; a cluster's members carry each other's
addresses across nodes; `ws update` changes the node's order; every bad input is refused
with a clear message and nothing stored; a node's declared bandwidth is never
over-promised."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from tests.functional.harness import Site, wait_for
from workspace.cli import admin, ws
from workspace.client import Client
from workspace.domain.model import Order
from workspace.domain.netpolicy import AllowRule, Connectivity, Limits, PolicyUpdate
from workspace.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from workspace.identity import Identity, Kind
from workspace.ops import update
from workspace.v1 import (
    admin_pb2,
    clusters_pb2,
    common_pb2,
    projects_pb2,
    workspaces_pb2,
)

LIMITS = dict(cpu_percent=25, cpu_weight=200, disk_mbps=10, disk_iops=500, net_mbps=20)


def node_order(site: Site, node: str, wid: str, pred: Any = bool) -> Order:
    """The order the fake node ``node`` holds for ``wid`` once ``pred(order)`` holds."""

    def got() -> Order | None:
        order = site.agents[node].executor.orders().get(wid)
        return order if order is not None and pred(order) else None

    found: Order = wait_for(got, what=f"{node}'s order for {wid}")
    return found


def code_of(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[no-any-return]


def names(site: Site) -> set[str]:
    listed = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    return {w.name for w in listed.workspaces}


def run(module: ModuleType, site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    try:
        code = module.main(list(argv), connect=lambda _s: Client(site.address))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_create_with_policy_and_limits_reaches_the_nodes_order(ready_site: Site) -> None:
    site = ready_site
    w = site.stubs.create(
        name="pol",
        connectivity="outbound",
        allow=["tcp/22", "tcp/8000-8100:10.0.0.0/8", "tcp/22", "ICMP"],
        limits=common_pb2.Limits(**LIMITS),
    )
    assert w.connectivity == "outbound"
    assert list(w.allow) == ["icmp", "tcp/22", "tcp/8000-8100:10.0.0.0/8"]
    assert w.limits == common_pb2.Limits(**LIMITS)
    order = node_order(site, "node1", w.id)
    assert order.connectivity is Connectivity.OUTBOUND
    assert order.allow == tuple(
        AllowRule.parse(t) for t in ("icmp", "tcp/22", "tcp/8000-8100:10.0.0.0/8")
    )
    assert order.limits == Limits(**LIMITS)
    assert order.peers == ()  # not in a cluster
    shown = site.stubs.get("pol")
    assert (shown.connectivity, list(shown.allow)) == ("outbound", list(w.allow))


def test_defaults_site_then_project_then_request(tmp_path: Path) -> None:
    site = Site(tmp_path, defaults={"net_mbps": 100, "cpu_weight": 50, "connectivity": "outbound"})
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        plain = site.stubs.create(name="plain")
        assert plain.connectivity == "outbound"
        assert plain.limits == common_pb2.Limits(net_mbps=100, cpu_weight=50)
        client = Client(site.address)  # the admin makes a project with defaults of its own
        p = client.create_project("phys", default_limits={"net_mbps": 40, "cpu_percent": 50})
        assert p.default_limits == common_pb2.Limits(net_mbps=40, cpu_percent=50)
        inproj = client.create_workspace("img", name="inproj", project="phys")
        assert inproj.limits == common_pb2.Limits(net_mbps=40, cpu_percent=50, cpu_weight=50)
        asked = client.create_workspace(
            "img", name="asked", project="phys", limits={"net_mbps": 7}, connectivity="open"
        )
        assert asked.connectivity == "open"
        assert asked.limits == common_pb2.Limits(net_mbps=7, cpu_percent=50, cpu_weight=50)
        order = node_order(site, "node1", inproj.id)
        assert order.limits == Limits(cpu_percent=50, cpu_weight=50, net_mbps=40)
        assert order.connectivity is Connectivity.OUTBOUND
        # `ws-admin project set`: later workspaces take the new defaults
        p = client.set_project_defaults("phys", {"disk_iops": 300})
        assert p.default_limits == common_pb2.Limits(disk_iops=300)
        later = client.create_workspace("img", name="later", project="phys")
        assert later.limits == common_pb2.Limits(disk_iops=300, net_mbps=100, cpu_weight=50)
        # `ws update --reset`: a limit goes back to the project's default, else the
        # site's, else none
        u = client.update_workspace(
            "asked", limits={"cpu_weight": 500}, reset_limits=["net_mbps", "cpu_percent"]
        )
        assert u.limits == common_pb2.Limits(net_mbps=100, cpu_weight=500, disk_iops=0)
        want = Limits(cpu_weight=500, net_mbps=100)
        node_order(site, "node1", u.id, lambda o: o.limits == want)
        for kw, needle in (
            ({"reset_limits": ["ram"]}, "reset 'ram'"),
            ({"reset_limits": ["cpu_weight"], "limits": {"cpu_weight": 9}}, "not both"),
        ):
            with pytest.raises(InvalidArgument) as exc:
                client.update_workspace("asked", **kw)
            assert needle in str(exc.value)
        assert site.stubs.get("asked").limits == u.limits
        client.close()
    finally:
        site.close()


def test_cluster_members_carry_every_members_address_across_nodes(ready_site: Site) -> None:
    site = ready_site
    site.add_agent("node2")
    c = site.stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="grp",
            members=[clusters_pb2.ClusterMember(role="w", image="img", count=3)],
            affinity=clusters_pb2.AFFINITY_SOFT_ANTI,
            connectivity="cluster",
            allow=["tcp/22"],
            limits=common_pb2.Limits(net_mbps=30),
        )
    )
    ips = sorted((m.nics[0].ip for m in c.members), key=lambda a: tuple(map(int, a.split("."))))
    assert len({m.node for m in c.members}) == 2  # spread over both nodes
    for m in c.members:
        assert m.connectivity == "cluster" and list(m.allow) == ["tcp/22"]
        order = node_order(site, m.node, m.id)
        assert order.connectivity is Connectivity.CLUSTER
        assert list(order.peers) == ips
        assert order.limits.net_mbps == 30
    # a member destroyed: the others' orders (on both nodes) follow
    gone = c.members[0]
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(gone.id))
    site.stubs.wait_state(gone.id, common_pb2.WORKSPACE_STATE_TERMINATED)
    left = [ip for ip in ips if ip != gone.nics[0].ip]
    for m in c.members[1:]:
        node_order(site, m.node, m.id, lambda o: list(o.peers) == left)


def test_update_changes_the_nodes_order(ready_site: Site, capsys: Any) -> None:
    site = ready_site
    w = site.stubs.create(name="upd", allow=["tcp/22"], limits=common_pb2.Limits(net_mbps=10))
    site.stubs.wait_state(w.id, common_pb2.WORKSPACE_STATE_RUNNING)
    client = Client(site.address)
    u = client.update_workspace(
        "upd", connectivity="outbound", limits={"cpu_percent": 30, "net_mbps": 15}
    )
    assert u.connectivity == "outbound" and list(u.allow) == ["tcp/22"]  # rules kept
    assert u.limits == common_pb2.Limits(cpu_percent=30, net_mbps=15)
    node_order(
        site,
        "node1",
        w.id,
        lambda o: (
            o.connectivity is Connectivity.OUTBOUND
            and o.limits == Limits(cpu_percent=30, net_mbps=15)
        ),
    )
    u = client.update_workspace("upd", allow=["udp/53", "icmp"])
    assert list(u.allow) == ["icmp", "udp/53"]
    node_order(site, "node1", w.id, lambda o: [str(r) for r in o.allow] == ["icmp", "udp/53"])
    # the CLI: --no-allow removes every rule
    code, out, _ = run(ws, site, capsys, "update", "upd", "--no-allow", "--disk-iops", "100")
    assert code == 0 and "disk_iops=100" in out
    assert list(site.stubs.get("upd").allow) == []
    node_order(site, "node1", w.id, lambda o: o.allow == () and o.limits.disk_iops == 100)
    client.close()


def test_update_is_recorded_as_a_site_event(ready_site: Site) -> None:
    site = ready_site
    w = site.stubs.create(name="ev")
    client = Client(site.address)
    client.update_workspace("ev", connectivity="cluster")
    events = list(site.stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest(), timeout=5))
    updated = [e for e in events if e.kind == "workspace.updated"]
    assert [(e.workspace_id, e.reason) for e in updated] == [(w.id, "connectivity open -> cluster")]
    # Who: the caller's principal, as every other event of a user's says (`user:local`,
    # not `local`: `ws events` printed "by local" beside "by user:local").
    (created,) = [e for e in events if e.kind == "workspace.created" and e.workspace_id == w.id]
    assert created.who.startswith("user:")
    assert [e.who for e in updated] == [created.who]
    client.close()


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"connectivity": "sideways"}, "connectivity 'sideways'"),
        ({"allow": ["tcp/22", "tcp/99999"]}, "allow rule 'tcp/99999'"),
        ({"allow": ["smtp/25"]}, "allow rule 'smtp/25'"),
        # Not widened to 10.0.0.0/8 behind the caller's back (a subnet is refused alike).
        ({"allow": ["tcp/22:10.0.0.1/8"]}, "10.0.0.1/8 has host bits set; use 10.0.0.0/8"),
        ({"limits": common_pb2.Limits(cpu_percent=150)}, "--cpu-percent 150"),
        ({"limits": common_pb2.Limits(net_mbps=-1)}, "--net-mbps -1"),
    ],
)
def test_bad_create_input_is_refused_and_nothing_stored(
    ready_site: Site, kw: dict[str, Any], needle: str
) -> None:
    site = ready_site
    with pytest.raises(grpc.RpcError) as exc:
        site.stubs.create(name="bad", **kw)
    assert code_of(exc) is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (exc.value.details() or "")
    assert "bad" not in names(site)


def test_bad_cluster_input_is_refused_and_nothing_stored(ready_site: Site) -> None:
    site = ready_site
    for extra, needle in (
        ({"connectivity": "nope"}, "connectivity 'nope'"),
        ({"allow": ["tcp/1-"]}, "allow rule 'tcp/1-'"),
        ({"limits": common_pb2.Limits(disk_iops=0, cpu_weight=20000)}, "--cpu-weight 20000"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            site.stubs.clusters.CreateCluster(
                clusters_pb2.CreateClusterRequest(
                    name="badc",
                    members=[clusters_pb2.ClusterMember(role="w", image="img")],
                    **extra,
                )
            )
        assert code_of(exc) is grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (exc.value.details() or "")
    listed = site.stubs.clusters.ListClusters(clusters_pb2.ListClustersRequest())
    assert not listed.clusters
    assert not names(site)


def test_bad_update_is_refused_and_nothing_changed(ready_site: Site) -> None:
    site = ready_site
    w = site.stubs.create(name="keep", allow=["tcp/22"], limits=common_pb2.Limits(net_mbps=10))
    client = Client(site.address)
    for kw, needle in (
        ({"connectivity": "bogus"}, "connectivity 'bogus'"),
        ({"allow": ["tcp/80", "tcp:xyz"]}, "allow rule 'tcp:xyz'"),
        ({"limits": {"disk_mbps": 100_001}}, "--disk-mbps 100001"),
    ):
        with pytest.raises(InvalidArgument) as exc:
            client.update_workspace("keep", **kw)
        assert needle in str(exc.value)
    after = site.stubs.get("keep")
    assert (after.connectivity, list(after.allow), after.limits) == (
        w.connectivity,
        list(w.allow),
        w.limits,
    )
    client.close()


def test_allow_rules_without_set_allow_are_refused_not_ignored(ready_site: Site) -> None:
    """A program calling UpdateWorkspace with allow rules but not set_allow (a field a
    generated stub leaves false unless told) was answered OK and its rules were not
    applied: the call said it succeeded and changed nothing. It is INVALID_ARGUMENT."""
    site = ready_site
    w = site.stubs.create(name="rules", allow=["tcp/22"])
    with pytest.raises(grpc.RpcError) as exc:
        site.stubs.ws.UpdateWorkspace(
            workspaces_pb2.UpdateWorkspaceRequest(id="rules", allow=["tcp/80"])
        )
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "set_allow" in (exc.value.details() or "")
    assert list(site.stubs.get("rules").allow) == list(w.allow) == ["tcp/22"]
    # With set_allow they are applied; set_allow and none: no rules.
    req = workspaces_pb2.UpdateWorkspaceRequest(id="rules", set_allow=True, allow=["tcp/80"])
    assert list(site.stubs.ws.UpdateWorkspace(req).allow) == ["tcp/80"]
    req = workspaces_pb2.UpdateWorkspaceRequest(id="rules", set_allow=True)
    assert list(site.stubs.ws.UpdateWorkspace(req).allow) == []


def test_update_only_by_the_owner_or_an_admin(ready_site: Site) -> None:
    site = ready_site
    assert site.service is not None
    env = site.service.env
    w = site.stubs.create(name="mine")  # the admin `local` owns it
    bob = Identity(Kind.USER, "bob")
    with pytest.raises(NotFound):  # bob cannot even see it
        update.update(env, bob, PolicyUpdate(ref=w.id, connectivity=Connectivity.CLUSTER))
    # a project member sees a project workspace but may not update it
    with Client(site.address) as client:
        client.create_project("shared")
        client.add_project_user("shared", "bob")
    shared = site.stubs.create(name="shared-ws", project="shared")
    with pytest.raises(PermissionDenied, match="only the owner"):
        update.update(env, bob, PolicyUpdate(ref=shared.id, connectivity=Connectivity.CLUSTER))
    admin_id = Identity(Kind.USER, "root", admin=True)
    v = update.update(env, admin_id, PolicyUpdate(ref=shared.id, allow=()))
    assert v.allow == ()


def test_network_vlan(site: Site, capsys: Any) -> None:
    site.stubs.network("tagged", "10.214.0.0/24", vlan=42)
    nets = {
        n.name: n for n in site.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
    }
    assert nets["tagged"].vlan == 42
    with pytest.raises(grpc.RpcError) as exc:
        site.stubs.network("toohigh", "10.215.0.0/24", vlan=4095)
    assert code_of(exc) is grpc.StatusCode.INVALID_ARGUMENT
    assert "VLAN id 4095" in (exc.value.details() or "")
    code, out, _ = run(
        admin, site, capsys, "network", "create", "v7", "--subnet", "10.216.0.0/24", "--vlan", "7"
    )
    assert code == 0, out
    code, out, _ = run(admin, site, capsys, "network", "list")
    assert "VLAN" in out and " 7 " in out and " 42 " in out
    site.stubs.import_image("img")
    site.add_agent("node1", networks=[{"name": "tagged"}])
    w = site.stubs.create(name="onvlan", networks=["tagged"])
    order = node_order(site, "node1", w.id)
    assert [n.vlan for n in order.nics] == [42]
    assert "toohigh" not in {
        n.name for n in site.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
    }


def test_cli_create_show_and_json(ready_site: Site, capsys: Any) -> None:
    import json

    site = ready_site
    code, out, err = run(
        ws,
        site,
        capsys,
        "create",
        "--image",
        "img",
        "--name",
        "cli",
        "--connectivity",
        "cluster",
        "--allow",
        "tcp/22",
        "--allow",
        "icmp",
        "--cpu-percent",
        "40",
        "--net-mbps",
        "25",
    )
    assert code == 0, err
    assert "policy      cluster; allow icmp,tcp/22" in out
    code, out, _ = run(ws, site, capsys, "show", "cli")
    assert "cpu_percent=40 net_mbps=25" in out and "icmp,tcp/22" in out
    code, out, _ = run(ws, site, capsys, "--output", "json", "show", "cli")
    shown = json.loads(out)
    assert shown["connectivity"] == "cluster"
    assert shown["allow"] == ["icmp", "tcp/22"]
    assert {k: v for k, v in shown["limits"].items() if v} == {"cpu_percent": 40, "net_mbps": 25}
    code, _, err = run(ws, site, capsys, "create", "--image", "img", "--allow", "bogus")
    assert code != 0 and "allow rule 'bogus'" in err
    # Open: the rules are kept (for a later change back) but open nothing: said so.
    code, out, _ = run(ws, site, capsys, "update", "cli", "--connectivity", "open")
    assert code == 0 and "policy      open; allow icmp,tcp/22 (unused while open)" in out


def test_bandwidth_capacity_is_never_over_promised(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", net_mbps=100)
    node = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
    assert node.name == "node1"
    a = site.stubs.create(name="a", limits=common_pb2.Limits(net_mbps=50))
    b = site.stubs.create(name="b", limits=common_pb2.Limits(net_mbps=50))
    assert a.node == b.node == "node1"
    with pytest.raises(grpc.RpcError) as exc:
        site.stubs.create(name="c", limits=common_pb2.Limits(net_mbps=50))
    assert code_of(exc) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too little free bandwidth" in (exc.value.details() or "")
    assert "c" not in names(site)
    # unlimited workspaces still fit; destroying one frees its share
    site.stubs.create(name="free")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref("a"))
    site.stubs.wait_state(a.id, common_pb2.WORKSPACE_STATE_TERMINATED)
    c = site.stubs.create(name="c", limits=common_pb2.Limits(net_mbps=50))
    assert c.node == "node1"
    # `ws update` cannot promise more than the node declared either
    client = Client(site.address)
    with pytest.raises(ResourceExhausted, match="bandwidth"):
        client.update_workspace("c", limits={"net_mbps": 60})
    assert site.stubs.get("c").limits.net_mbps == 50
    client.close()


def test_project_defaults_from_the_cli(site: Site, capsys: Any) -> None:
    code, out, err = run(
        admin,
        site,
        capsys,
        "project",
        "create",
        "lab",
        "--default-cpu-percent",
        "50",
        "--default-net-mbps",
        "10",
    )
    assert code == 0, err
    assert "cpu_percent=50 net_mbps=10" in out
    code, out, err = run(admin, site, capsys, "project", "set", "lab", "--default-disk-mbps", "5")
    assert code == 0, err
    assert "disk_mbps=5" in out and "cpu_percent" not in out
    code, _, err = run(admin, site, capsys, "project", "set", "lab", "--default-cpu-percent", "500")
    assert code != 0 and "--default-cpu-percent 500 is out of range" in err
    with Client(site.address) as client:
        (p,) = [p for p in client.list_projects() if p.name == "lab"]
    assert isinstance(p, projects_pb2.Project)
    assert p.default_limits == common_pb2.Limits(disk_mbps=5)


def test_cli_cluster_create_with_policy(ready_site: Site, capsys: Any) -> None:
    site = ready_site
    code, _, err = run(
        ws,
        site,
        capsys,
        "cluster",
        "create",
        "cli-grp",
        "--member",
        "w=img,count=2",
        "--connectivity",
        "cluster",
        "--allow",
        "udp/5000-5010",
        "--net-mbps",
        "5",
    )
    assert code == 0, err
    with Client(site.address) as client:
        c = client.get_cluster("cli-grp")
    ips = sorted(m.nics[0].ip for m in c.members)
    for m in c.members:
        assert (m.connectivity, list(m.allow), m.limits.net_mbps) == (
            "cluster",
            ["udp/5000-5010"],
            5,
        )
        order = node_order(site, "node1", m.id, lambda o: len(o.peers) == 2)
        assert sorted(order.peers) == ips


def test_node_list_shows_declared_and_reserved_bandwidth(site: Site, capsys: Any) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", net_mbps=100, disk_mbps=400)
    site.stubs.create(name="a", limits=common_pb2.Limits(net_mbps=30, disk_mbps=50))
    (n,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    assert (n.net_mbps, n.used_net_mbps, n.disk_mbps, n.used_disk_mbps) == (100, 30, 400, 50)
    code, out, _ = run(admin, site, capsys, "node", "list")
    assert code == 0 and "BANDWIDTH" in out and "net=30/100,disk=50/400" in out
    site.stubs.ws.DestroyWorkspace(site.stubs.ref("a"))
    wait_for(
        lambda: (
            site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0].used_net_mbps == 0
        ),
        what="the reservation released",
    )
