"""`ws-admin network set NAME --dns ...`: a network's DNS servers change in place and
what is made from the network follows (real gRPC, fake-driver agent): the node's
orders, new workspaces' seeds, the seed bound of the workspaces already there; bad
requests change nothing."""

from __future__ import annotations

import json
import shlex

import grpc
import pytest
import yaml

from tests.functional.harness import ROOT, WS, Site, wait_for
from tests.functional.test_keys import import_cloud, orders_of
from workspace.cli import admin as admin_cli
from workspace.codec import node as codec_node
from workspace.ops import order_size, seeds
from workspace.ops.order_size import FIELD_BYTES
from workspace.store import Workspace
from workspace.v1 import admin_pb2

NEW = ["192.0.2.53", "192.0.2.54"]  # off the network (nothing is sent to them)
# As many servers as a network may have (networks.MAX_DNS_SERVERS), each as long as an
# IPv4 address is: the most seed a list adds.
LONG = [f"223.255.255.{i}" for i in range(251, 254)]


def network_of(site: Site, name: str) -> admin_pb2.Network:
    listed = site.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
    (net,) = [n for n in listed if n.name == name]
    return net


def dns_of(site: Site, name: str = "default") -> list[str]:
    return list(network_of(site, name).dns)


def range_of(site: Site, name: str = "default") -> tuple[str, str]:
    net = network_of(site, name)
    return net.range_start, net.range_end


def admin(site: Site, *args: str) -> int:
    return admin_cli.main(["--service", site.address, *args])


def agent_dns(site: Site, workspace_id: str) -> tuple[str, ...]:
    """The DNS servers of the workspace's first NIC in the orders node1's agent holds."""
    order = site.agents["node1"].executor.orders().get(workspace_id)
    return order.nics[0].dns if order is not None else ("(no order)",)


def seed_fits_its_bound(site: Site, workspace_id: str, name: str) -> bool:
    assert site.service is not None
    order = orders_of(site)[name]
    assert order.seed is not None
    with site.service.env.store.read() as s:
        row = s.get(Workspace, workspace_id)
        assert row is not None
        bound = order_size.seed_bytes(row.seed_bytes, 1, seeds.vendor_bytes(site.service.cfg))
    encoded = codec_node.seed_to_proto(order.seed)
    assert encoded is not None
    return encoded.ByteSize() + FIELD_BYTES <= bound


def test_new_servers_reach_the_nodes_orders_and_new_workspaces(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ready_site
    import_cloud(site)
    before = site.stubs.create(name="before", image="cloud")
    site.stubs.wait_state(before.id, WS.WORKSPACE_STATE_RUNNING)
    assert agent_dns(site, before.id) == ()

    assert admin(site, "network", "set", "default", "--dns", NEW[0], "--dns", NEW[1]) == 0
    out, err = capsys.readouterr()
    (row,) = [line.split() for line in out.splitlines() if line.startswith("default ")]
    assert ",".join(NEW) in row
    assert "workspaces already on default (1 address(es) in use) keep the DNS servers" in err
    assert dns_of(site) == NEW
    # The node is sent its orders again at once, with the new servers on the NIC (its
    # DHCP server's option and a cluster NIC's filter are made from them).
    wait_for(lambda: agent_dns(site, before.id) == tuple(NEW), what="the agent's new orders")

    after = site.stubs.create(name="after", image="cloud")
    assert orders_of(site)["after"].seed is not None
    net = yaml.safe_load(orders_of(site)["after"].seed.network_config)  # type: ignore[union-attr]
    assert net["ethernets"]["nic0"]["nameservers"] == {"addresses": NEW}
    site.stubs.wait_state(after.id, WS.WORKSPACE_STATE_RUNNING)

    # The longest list a network may have: the seeds the orders carry stay within the
    # bounds the order sizes are computed from (those of the workspaces there grown).
    assert admin(site, "network", "set", "default", "--output", "json", *_each(LONG)) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["dns"], shown["allocated"]) == ("default", LONG, 2)
    for w in (before, after):
        assert seed_fits_its_bound(site, w.id, w.name)

    assert admin(site, "network", "set", "default", "--no-dns") == 0
    capsys.readouterr()
    assert dns_of(site) == []
    wait_for(lambda: agent_dns(site, after.id) == (), what="orders without DNS servers")
    last = site.stubs.create(name="last", image="cloud")
    net = yaml.safe_load(orders_of(site)["last"].seed.network_config)  # type: ignore[union-attr]
    assert "nameservers" not in net["ethernets"]["nic0"]
    site.stubs.wait_state(last.id, WS.WORKSPACE_STATE_RUNNING)


def _each(servers: list[str]) -> list[str]:
    return [a for d in servers for a in ("--dns", d)]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["nope", "--dns", "10.0.0.1"], 1, "network 'nope' not found"),
        (["default", "--dns", "10.1"], 1, "network default: DNS server '10.1' is not an address"),
        (["default", "--dns", NEW[0], "--dns", "x"], 1, "DNS server 'x' is not an address"),
        (["default", *_each([*LONG, NEW[0]])], 1, "4 DNS servers given, at most 3"),
        (["default", "--dns", "2001:db8::53"], 1, "DNS server '2001:db8::53' is an IPv6 address"),
        (["default"], 2, "say what to change: --dns IP (repeatable), --no-dns or --range"),
        (["default", "--range", "10.213.1.2-10.213.1.9"], 1, "is not a host of 10.213.0.0/24"),
        (["default", "--range", "10.213.0.9-10.213.0.3"], 1, "is empty"),
        (["default", "--range", "10.213.0.9"], 2, "--range must be START-END"),
        (["default", "--dns", NEW[0], "--no-dns"], 2, "not allowed with argument"),
    ],
)
def test_a_bad_change_is_refused_and_changes_nothing(
    ready_site: Site,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    says: str,
) -> None:
    site = ready_site
    assert admin(site, "network", "set", "default", "--dns", "10.213.0.1") == 0
    capsys.readouterr()
    try:
        got = admin(site, "network", "set", *args)
    except SystemExit as exc:  # argparse's own refusals
        got = int(exc.code or 0)
    assert got == code
    assert says in capsys.readouterr().err
    assert dns_of(site) == ["10.213.0.1"]
    assert range_of(site) == ("10.213.0.2", "10.213.0.254")


def test_an_update_that_asks_no_change_is_invalid(ready_site: Site) -> None:
    with pytest.raises(grpc.RpcError) as err:
        ready_site.stubs.admin.UpdateNetwork(
            admin_pb2.UpdateNetworkRequest(name="default", dns=["10.213.0.9"])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing to change" in str(err.value.details())
    assert dns_of(ready_site) == []


def test_a_part_given_without_its_flag_is_refused_not_ignored(ready_site: Site) -> None:
    """DNS servers sent beside set_range but without set_dns (or a range without
    set_range) were left as they were while the update answered OK."""
    for req, says in (
        (
            admin_pb2.UpdateNetworkRequest(
                name="default",
                set_range=True,
                range_start="10.213.0.2",
                range_end="10.213.0.200",
                dns=["10.213.0.9"],
            ),
            "dns given without set_dns",
        ),
        (
            admin_pb2.UpdateNetworkRequest(
                name="default", set_dns=True, dns=["10.213.0.9"], range_end="10.213.0.200"
            ),
            "range given without set_range",
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            ready_site.stubs.admin.UpdateNetwork(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in str(err.value.details())
    assert dns_of(ready_site) == []
    assert range_of(ready_site) == ("10.213.0.2", "10.213.0.254")


def test_a_full_range_grows_and_the_waiting_create_is_placed(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two addresses, both in use: a create that may wait for capacity waits; the range
    grown, it is placed with the next address. A range that would leave an address in
    use outside is refused, naming it, and nothing changes."""
    site = ready_site
    site.stubs.network(
        "small", "10.213.40.0/24", range_start="10.213.40.2", range_end="10.213.40.3"
    )
    site.stop_agent("node1")
    site.add_agent("node1", networks=[{"name": "default"}, {"name": "small"}])
    made = [site.stubs.create(name=f"s{i}", networks=["small"], memory_mib=64) for i in range(2)]
    assert [w.nics[0].ip for w in made] == ["10.213.40.2", "10.213.40.3"]
    waiting = site.stubs.create(
        name="s2", networks=["small"], memory_mib=64, wait_for_capacity_s=300
    )
    assert waiting.state == WS.WORKSPACE_STATE_PENDING and not waiting.nics

    assert admin(site, "network", "set", "small", "--range", "10.213.40.3-10.213.40.9") == 1
    err = capsys.readouterr().err
    assert "1 address(es) in use lie outside 10.213.40.3-10.213.40.9" in err
    assert "10.213.40.2 of workspace s0 (local)" in err
    assert range_of(site, "small") == ("10.213.40.2", "10.213.40.3")
    assert site.stubs.get(waiting.id).state == WS.WORKSPACE_STATE_PENDING

    assert admin(site, "network", "set", "small", "--range", "10.213.40.2-10.213.40.9") == 0
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines() if "small" in line]
    assert row[:4] == ["small", "10.213.40.0/24", "10.213.40.1", "10.213.40.2-10.213.40.9"]
    assert row[-1] == "2"  # allocated
    assert range_of(site, "small") == ("10.213.40.2", "10.213.40.9")
    placed = site.stubs.wait_state(waiting.id, WS.WORKSPACE_STATE_RUNNING)
    assert placed.nics[0].ip == "10.213.40.4"
    # An empty side is the default: the subnet's last host.
    assert admin(site, "network", "set", "small", "--range", "10.213.40.2-") == 0
    capsys.readouterr()
    assert range_of(site, "small") == ("10.213.40.2", "10.213.40.254")


def test_a_networks_life_is_in_the_site_events(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Made, changed (what changed, from what to what) and deleted, each by its caller,
    in `ws-admin events`."""
    site = ready_site
    assert admin(site, "network", "create", "lab", "--subnet", "10.213.40.0/24") == 0
    assert admin(site, "network", "set", "lab", "--dns", NEW[0]) == 0
    assert admin(site, "network", "set", "lab", "--dns", NEW[0]) == 0  # no change: no event
    assert admin(site, "network", "set", "lab", "--range", "10.213.40.10-10.213.40.20") == 0
    assert admin(site, "network", "set", "lab", "--no-dns", "--range=-10.213.40.30") == 0
    assert admin(site, "network", "delete", "lab") == 0
    capsys.readouterr()
    assert admin(site, "events", "--output", "json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lab = [(e["kind"], e["reason"]) for e in events if e["subject"] == "lab"]
    assert lab == [
        ("network.created", "10.213.40.0/24, range 10.213.40.2-10.213.40.254, bridge wsbr-lab"),
        ("network.updated", f"DNS servers none -> {NEW[0]}"),
        ("network.updated", "range 10.213.40.2-10.213.40.254 -> 10.213.40.10-10.213.40.20"),
        (
            "network.updated",
            f"DNS servers {NEW[0]} -> none; range 10.213.40.10-10.213.40.20 -> "
            "10.213.40.2-10.213.40.30",
        ),
        ("network.deleted", "10.213.40.0/24, range 10.213.40.2-10.213.40.30, bridge wsbr-lab"),
    ]
    assert {e["who"] for e in events if e["subject"] == "lab"} == {"user:local"}
    assert admin(site, "events") == 0  # one line each, naming the network as such
    said = [line for line in capsys.readouterr().out.splitlines() if "network.deleted" in line]
    assert said[0].split("  ")[1:4] == [
        "network.deleted",
        "network lab",
        "by user:local: 10.213.40.0/24, range 10.213.40.2-10.213.40.30, bridge wsbr-lab",
    ]


def test_the_readmes_network_commands_run_as_printed(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every `ws-admin network` line of the README, in its order, as a site admin would
    copy them: each succeeds. Its campus example gave a DNS server inside the network's
    range, which `network create` refuses (the range is the workspaces' addresses)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")  # joined continuations
    lines = [line for line in text.splitlines() if line.startswith("ws-admin network ")]
    assert any(" create " in line and "--dns" in line for line in lines)
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        code = admin(ready_site, *argv)
        assert code == 0, f"{line!r}: {capsys.readouterr().err.strip()}"
