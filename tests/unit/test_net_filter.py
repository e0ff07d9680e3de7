"""The node's nftables ruleset rendered from orders (agent/net/filter.py), against golden
files, and the apply path with ``nft`` replaced. The syntax of the rendered text is
checked by the real ``nft -c`` in tests/host/test_net_policy.py.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 pytest tests/unit/test_net_filter.py`` and review the diff.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.net import filter as nf
from agent.net.filter import BridgeSpec, FilterError, apply_ruleset, nic_rules, render
from agent.virt.base import tap_name
from workspace.domain.model import Nic, Order
from workspace.domain.netpolicy import Connectivity, parse_rules
from workspace.domain.states import Desired

GOLDEN = Path(__file__).parent / "golden"


def nic(
    ip: str, mac: str, bridge: str = "wsbr0", network: str = "default", dns: tuple[str, ...] = ()
) -> Nic:
    return Nic(network, ip, mac, 24, "10.0.0.1", bridge, "10.0.0.0/24", dns)


def order(
    wid: str,
    *nics: Nic,
    conn: Connectivity = Connectivity.OPEN,
    allow: tuple[str, ...] = (),
    peers: tuple[str, ...] = (),
) -> Order:
    return Order(
        wid,
        wid,
        wid,
        Desired.RUNNING,
        1,
        512,
        "img",
        (),
        nics,
        connectivity=conn,
        allow=parse_rules(allow),
        peers=peers,
    )


OPEN = order("w-open", nic("10.0.0.5", "52:54:00:00:00:05"))
CLUSTER = order(
    "w-clu",
    nic("10.0.0.6", "52:54:00:00:00:06", dns=("10.0.0.53", "10.9.0.53", "fd00::53")),
    conn=Connectivity.CLUSTER,
    allow=("tcp/22",),
    peers=("10.0.0.7", "10.0.0.6", "10.0.9.9"),
)
OUTBOUND = order(
    "w-out",
    nic("10.0.0.8", "52:54:00:00:00:08"),
    nic("10.5.0.8", "52:54:00:00:05:08", bridge="wsbr5", network="storage"),
    conn=Connectivity.OUTBOUND,
    allow=("tcp/8000-8100:10.0.0.0/8", "icmp", "udp/53", "any:10.1.0.0/16"),
)


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_open_only_guards() -> None:
    text = render([OPEN])
    golden("netfilter_open.nft", text)
    tap = tap_name("w-open", 0)
    assert f"from_{tap}" in text
    assert "meta mark set" not in text
    assert "out_" not in text and "in_" not in text
    # what it receives: only frames to its own MAC, broadcasts and multicasts
    assert _chain(text, f"to_{tap}") == [UNICAST_TO_OTHERS.format(mac="52:54:00:00:00:05")]


UNICAST_TO_OTHERS = "ether daddr != {mac} ether daddr & 01:00:00:00:00:00 == 00:00:00:00:00:00 drop"


def test_no_nic_receives_frames_unicast_to_another_mac() -> None:
    """A bridge floods a frame for a MAC it has not learned (a VM silent for its FDB's
    ageing time, or just plugged) to every port: an OPEN VM read its neighbours' traffic
    (a CLUSTER member's with its peers too). Every NIC's tap delivers frames for its own
    MAC, broadcasts and multicasts only, on every path into it (bridged, or the node's)."""
    text = render([OPEN, CLUSTER, OUTBOUND])
    for wid, index, mac in (
        ("w-open", 0, "52:54:00:00:00:05"),
        ("w-clu", 0, "52:54:00:00:00:06"),
        ("w-out", 1, "52:54:00:00:05:08"),
    ):
        tap = tap_name(wid, index)
        assert _chain(text, f"to_{tap}")[0] == UNICAST_TO_OTHERS.format(mac=mac)
        for hook in ("guard_forward", "guard_output"):
            vmap = next(r for r in _chain(text, hook) if r.startswith("oifname vmap"))
            assert f'"{tap}" : jump to_{tap}' in vmap


def test_a_nic_with_bad_values_receives_nothing_either() -> None:
    """A NIC whose values cannot be rendered sends nothing (fail closed), and has no MAC
    to trust for what it may receive: without a to_ chain its tap delivered every frame
    the bridge floods, its neighbours' unicast included, to a VM its owner still reads
    (a console, another NIC), while every valid NIC gets its own frames only."""
    for conn in (Connectivity.OPEN, Connectivity.CLUSTER):
        for bad_nic in (
            nic("10.0.0.9", "52:54:00:zz:00:09"),  # no MAC to name
            nic("10.0.0.9", "52:54:00:00:00:09", bridge='br"x'),  # a MAC, not to trust
        ):
            text = render([OPEN, order("w-bad", bad_nic, conn=conn)])
            tap = tap_name("w-bad", 0)
            assert _chain(text, f"to_{tap}") == ["drop"]
            for hook in ("guard_forward", "guard_output"):
                vmap = next(r for r in _chain(text, hook) if r.startswith("oifname vmap"))
                assert f'"{tap}" : jump to_{tap}' in vmap
    # alone on the node too
    text = render([order("w-bad", nic("10.0.0.9", "52:54:00:zz:00:09"))])
    assert _chain(text, f"to_{tap_name('w-bad', 0)}") == ["drop"]
    assert any(r.startswith("oifname vmap") for r in _chain(text, "guard_output"))


def test_every_policy_and_an_uplink() -> None:
    bridges = [
        BridgeSpec("wsbr0", "eth1.100", "10.0.0.1", dhcp_server="10.0.0.1"),
        BridgeSpec("wsbr5", "eth1"),
    ]
    golden("netfilter_policies.nft", render([OUTBOUND, CLUSTER, OPEN], bridges))


def test_restricted_dhcp_is_with_the_nodes_server_only() -> None:
    """udp 68 -> 67 from a CLUSTER NIC goes to its node's DHCP server or a broadcast,
    and udp 67 -> 68 comes in from that server only; where the node serves no DHCP on
    the bridge (the site's server, anywhere) both stay open."""
    served = render([CLUSTER], [BridgeSpec("wsbr0", dhcp_server="10.0.0.2")])
    assert "ip daddr { 10.0.0.2, 255.255.255.255 } udp sport 68 udp dport 67 return" in served
    assert "ip saddr 10.0.0.2 udp sport 67 udp dport 68 accept" in served
    assert "\t\tudp sport 68 udp dport 67 return" not in served
    elsewhere = render([CLUSTER])
    assert "\t\tudp sport 68 udp dport 67 return" in elsewhere
    assert "\t\tudp sport 67 udp dport 68 accept" in elsewhere


def test_empty_node_still_replaces_both_tables() -> None:
    text = render([])
    golden("netfilter_empty.nft", text)
    for family, table in (("bridge", "ws_guard"), ("inet", "ws_policy")):
        assert f"add table {family} {table}\ndelete table {family} {table}\n" in text


def test_deterministic_whatever_the_order_of_orders() -> None:
    assert render([OPEN, CLUSTER, OUTBOUND]) == render([OUTBOUND, OPEN, CLUSTER])


def test_anti_spoofing_of_each_nic() -> None:
    text = render([OUTBOUND])
    for i, (ip, mac) in enumerate(
        [("10.0.0.8", "52:54:00:00:00:08"), ("10.5.0.8", "52:54:00:00:05:08")]
    ):
        chain = _chain(text, f"from_{tap_name('w-out', i)}")
        assert f"ether saddr != {mac} drop" in chain
        assert f"ether type arp arp saddr ether != {mac} drop" in chain
        assert f"ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} drop" in chain
        assert f"ether type ip ip saddr != {ip} drop" in chain
        assert "ether type ip udp sport 67 drop" in chain
        assert chain[-1] == "drop"  # IPv6, VLAN tags, other ethertypes
        # the DHCP discover (from 0.0.0.0) passes before the source check
        discover = next(i for i, r in enumerate(chain) if "ip saddr 0.0.0.0" in r)
        assert discover < chain.index(f"ether type ip ip saddr != {ip} drop")


def test_no_nic_sends_to_a_dhcp_clients_port() -> None:
    """A DHCP client may take a server's reply by its destination port (68) alone
    (busybox udhcpc checks no source port), so a VM replying from port 6767 was a DHCP
    server to its OPEN neighbours (their router and DNS, or a NAK at each of their
    requests). No VM sends to port 68 at all."""
    text = render([OPEN, CLUSTER, OUTBOUND])
    for tap in (tap_name("w-open", 0), tap_name("w-clu", 0), tap_name("w-out", 1)):
        chain = _chain(text, f"from_{tap}")
        assert "ether type ip udp dport 68 drop" in chain
        # before anything returns an IPv4 datagram (its own address's)
        assert chain.index("ether type ip udp dport 68 drop") < chain.index("ether type ip return")
        discover = next(i for i, r in enumerate(chain) if "ip saddr 0.0.0.0" in r)
        assert chain.index("ether type ip udp dport 68 drop") < discover


def test_cluster_chains() -> None:
    text = render([CLUSTER])
    tap = tap_name("w-clu", 0)
    out = _chain(text, f"out_{tap}")
    # its own address is not a peer; every verdict but the last is return (the
    # receiver's chain must still run)
    assert "ip daddr { 10.0.0.7, 10.0.9.9 } return" in out
    assert "ip daddr 10.0.0.1 return" in out and out[-1] == "drop"
    # its network's DNS servers on port 53 only (an IPv6 one has no IPv4 rule to be in)
    dns = "ip daddr { 10.0.0.53, 10.9.0.53 } meta l4proto { tcp, udp } th dport 53 return"
    assert dns in out
    assert not any(r.endswith("accept") for r in out)
    inn = _chain(text, f"in_{tap}")
    assert inn[0] == "ct state established,related accept"
    assert "ip saddr { 10.0.0.7, 10.0.9.9 } accept" in inn
    assert "tcp dport 22 accept" in inn and inn[-1] == "drop"
    assert f'"wsbr0" . 10.0.0.6 : jump in_{tap}' in text
    assert f"0x57530001 : jump out_{tap}" in text


def test_outbound_chains() -> None:
    text = render([OUTBOUND])
    assert "out_" not in text.split("table inet")[1].replace("policy_output", "")
    inn = _chain(text, f"in_{tap_name('w-out', 0)}")
    assert inn == [
        "ct state established,related accept",
        "udp sport 67 udp dport 68 accept",
        "ip saddr 10.0.0.1 accept",
        "ip saddr 10.1.0.0/16 accept",
        "meta l4proto icmp accept",
        "ip saddr 10.0.0.0/8 tcp dport 8000-8100 accept",
        "udp dport 53 accept",
        "drop",
    ]


def test_distributed_gateway_kept_local() -> None:
    text = render([OPEN], [BridgeSpec("wsbr0", "eth1.100", "10.0.0.1")])
    assert 'oifname "eth1.100" drop' in _chain(text, "guard_output")
    fwd = _chain(text, "guard_forward")
    assert 'iifname "eth1.100" ether type arp arp daddr ip 10.0.0.1 drop' in fwd
    assert 'iifname "eth1.100" ether type arp arp daddr ip 10.0.0.1 drop' in _chain(
        text, "guard_input"
    )
    # IPv4 from the gateway address through the uplink is forged (every node holds it)
    for hook in ("guard_forward", "guard_input"):
        assert 'iifname "eth1.100" ether type ip ip saddr 10.0.0.1 drop' in _chain(text, hook)
    # an uplink without a shared gateway address: the node may talk through it
    assert "eth1" not in render([OPEN], [BridgeSpec("wsbr0", "eth1")])


def test_a_gateway_beyond_the_uplink_is_not_trusted() -> None:
    """bridge_address "" (a site router holds the gateway): any host of the uplink's L2
    could send from that address, so the policy gives it nothing extra."""
    local = render([OUTBOUND], [BridgeSpec("wsbr0", "eth1.100", "10.0.0.1")])
    routed = render([OUTBOUND], [BridgeSpec("wsbr0", "eth1.100")])
    alone = render([OUTBOUND])  # no uplink: only the node could use the address
    tap = tap_name("w-out", 0)
    assert "ip saddr 10.0.0.1 accept" in _chain(local, f"in_{tap}")
    assert "ip saddr 10.0.0.1 accept" in _chain(alone, f"in_{tap}")
    assert "ip saddr 10.0.0.1 accept" not in _chain(routed, f"in_{tap}")


def test_unserved_networks_are_left_out() -> None:
    rules = nic_rules([OUTBOUND], served={"default"})
    assert [r.bridge for r in rules] == ["wsbr0"]


def _chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"\tchain {name} {{")
    body = []
    for line in lines[start + 1 :]:
        if line == "\t}":
            break
        line = line.strip()
        if not line.startswith(("#", "type filter")):
            body.append(line)
    return body


# -- applying -----------------------------------------------------------------------------


class Proc:
    def __init__(self, rc: int, stderr: str = "") -> None:
        self.returncode, self.stderr, self.stdout = rc, stderr, ""


def test_apply_runs_nft_in_the_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], str]] = []

    def run(argv: list[str], **kw: Any) -> Proc:
        calls.append((argv, kw["input"]))
        return Proc(0)

    monkeypatch.setattr(subprocess, "run", run)
    apply_ruleset("table bridge x {}\n", "wsnf-1")
    assert calls == [(["ip", "netns", "exec", "wsnf-1", "nft", "-f", "-"], "table bridge x {}\n")]
    apply_ruleset("t\n")
    assert calls[-1][0] == ["nft", "-f", "-"]


def test_apply_error_names_the_workspace(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text = render([OPEN, CLUSTER])
    line = text.splitlines().index("\t\tether type ip ip saddr != 10.0.0.6 drop") + 1
    err = f"/dev/stdin:{line}:3-20: Error: Could not process rule: No such file or directory\n"
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: Proc(1, err))
    with pytest.raises(FilterError) as info:
        apply_ruleset(text)
    assert "workspace w-clu nic 0 bridge wsbr0" in info.value.message
    assert "workspace w-clu nic 0 bridge wsbr0" in caplog.text


def test_apply_without_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FilterError, match="install nftables"):
        apply_ruleset("t\n", nft="/nonexistent/nft")


def test_too_many_nics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nf, "MAX_NICS", 1)
    with pytest.raises(FilterError):
        render([OUTBOUND])


def test_a_nic_with_bad_values_is_cut_off_and_the_others_keep_their_rules() -> None:
    bad = order("w-bad", nic("10.0.0.9", "52:54:00:zz:00:09"), conn=Connectivity.CLUSTER)
    text = render([OPEN, bad])
    assert _chain(text, f"from_{tap_name('w-bad', 0)}") == ["drop"]
    assert "zz" not in text.replace("'52:54:00:zz:00:09'", "")
    assert f"in_{tap_name('w-bad', 0)}" not in text
    assert "ether saddr != 52:54:00:00:00:05 drop" in text
    (rule,) = nic_rules([order("w-x", nic("10.0.0.9", "52:54:00:00:00:09", bridge='br"x'))])
    assert rule.blocked.startswith("bridge")
    for dots in (".", ".."):  # Linux refuses them as interface names
        (rule,) = nic_rules([order("w-x", nic("10.0.0.9", "52:54:00:00:00:09", bridge=dots))])
        assert rule.blocked == f"bridge {dots!r} is not an interface name"


def test_a_tap_no_nic_has_is_delivered_nothing() -> None:
    """A tap of ours whose workspace left the orders (its domain not yet removed) sends
    nothing, and is delivered nothing either, bridged or from the node: it read every
    broadcast and every frame the bridge floods."""
    text = render([OPEN])
    tap = tap_name("w-open", 0)
    for hook in ("guard_forward", "guard_output"):
        rules = _chain(text, hook)
        unknown = f'oifname "wst*" oifname != {{ "{tap}" }} drop'
        assert unknown in rules
        vmap = next(i for i, r in enumerate(rules) if r.startswith("oifname vmap"))
        assert rules.index(unknown) < vmap
    assert 'oifname "wst*"' not in "".join(_chain(text, "guard_input"))


def test_each_nic_has_a_bound_on_its_tracked_connections() -> None:
    """``flow_limit``: every NIC that may send, whatever its connectivity, gets a chain
    of its own counting the connections it opens, reached by (bridge, address) first
    in the inet forward and input hooks; 0 renders none."""
    bad = order("w-bad", nic("10.0.0.9", "52:54:00:zz:00:09"))
    text = render([OPEN, CLUSTER, bad], flow_limit=4096)
    for wid, ip in (("w-open", "10.0.0.5"), ("w-clu", "10.0.0.6")):
        tap = tap_name(wid, 0)
        assert _chain(text, f"flows_{tap}") == ["ct state new ct count over 4096 counter drop"]
        for hook in ("policy_forward", "policy_input"):
            first = _chain(text, hook)[0]
            assert first.startswith("iifname . ip saddr vmap")
            assert f'"wsbr0" . {ip} : jump flows_{tap}' in first
    assert f"flows_{tap_name('w-bad', 0)}" not in text  # it sends nothing anyway
    assert "ct count" not in "".join(_chain(text, "policy_output"))
    assert "ct count" not in render([OPEN, CLUSTER])


def test_two_nics_with_one_address_share_one_bound() -> None:
    """Never sent by the service, but one key twice in a map would fail the whole
    ruleset: the first NIC's chain counts for both (one source, as conntrack sees it)."""
    twin = order("w-twin", nic("10.0.0.5", "52:54:00:00:00:15"))
    text = render([OPEN, twin], flow_limit=10)
    first = _chain(text, "policy_forward")[0]
    assert first.count('"wsbr0" . 10.0.0.5') == 1
