"""Networks: address pools and the bridges their NICs join."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence

import netaddr
from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from workspace import ipam
from workspace.domain.events import Kind
from workspace.domain.model import NetworkInfo
from workspace.domain.states import ClusterState, State
from workspace.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from workspace.identity import Identity
from workspace.ops import seeds, unit
from workspace.ops.projects import scope
from workspace.ops.unit import Env
from workspace.store import Backfill, Cluster, IpAllocation, Network, Node, Workspace
from workspace.store.mapping import network_info

log = logging.getLogger("workspace.ops.networks")

NET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# An interface name Linux takes (dev_valid_name): "." and ".." it refuses.
BRIDGE_RE = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}")
# DNS servers a network may give its guests: glibc's and musl's resolvers ask the first
# three of /etc/resolv.conf only (MAXNS), so a fourth is never asked.
MAX_DNS_SERVERS = 3
# "This network" and the class E range with the limited broadcast: never a DNS server.
_NOT_UNICAST = netaddr.IPSet(["0.0.0.0/8", "240.0.0.0/4", "::/128"])


def bridge_for(name: str) -> str:
    """A network's bridge when none is given: ``wsbr-NAME``; a name too long for a
    15-character interface name keeps its first 5 characters and 5 of its hash (the
    network names' first 10 characters alone would give two networks one bridge)."""
    whole = f"wsbr-{name}"
    if len(whole) <= 15:
        return whole
    return f"wsbr-{name[:5]}{hashlib.sha256(name.encode()).hexdigest()[:5]}"


def check_apart(name: str, subnet: str, bridge: str, vlan: int, others: Iterable[Network]) -> None:
    """Two networks share neither a bridge nor a VLAN (either way their DHCP servers and
    gateways would be on one segment; and a node's uplink sub-interface joins one
    bridge only) nor addresses (a node holds every network's gateway on its bridge:
    overlapping subnets would be two routes to the same addresses)."""
    mine = netaddr.IPNetwork(subnet)
    for other in others:
        if other.bridge == bridge:
            raise AlreadyExists(
                f"network {name}: bridge {bridge} is network {other.name}'s already; "
                "give another (--bridge)"
            )
        if vlan and other.vlan == vlan:
            raise AlreadyExists(
                f"network {name}: VLAN {vlan} is network {other.name}'s already (one VLAN "
                "is one segment); give another (--vlan)"
            )
        theirs = netaddr.IPNetwork(other.subnet)
        if mine.first <= theirs.last and theirs.first <= mine.last:
            raise InvalidArgument(
                f"network {name}: subnet {subnet} overlaps network {other.name}'s {other.subnet}"
            )


def check_dns(name: str, servers: Sequence[str], pool: ipam.Pool, *, given: bool = True) -> None:
    """DNS servers a guest can ask: unicast addresses off the guest's own host, and none
    of the addresses ``pool`` gives to workspaces (a ``cluster`` workspace may ask
    its network's DNS servers: one that is a workspace's address would open that
    workspace's port 53 to every tenant on the network).

    ``given``: a list the request gives (not one stored before these checks): also at
    most ``MAX_DNS_SERVERS``, each once, IPv4 only (a guest sends no IPv6: the node's
    filter drops it, and the DHCP server offers IPv4 servers only)."""
    if given:
        _check_dns_list(name, servers)
    subnet = netaddr.IPNetwork(pool.subnet)
    first, last = netaddr.IPAddress(pool.range_start), netaddr.IPAddress(pool.range_end)
    for d in servers:
        what = f"network {name}: DNS server {d!r}"
        ip = _dns_address(what, d)
        if ip.is_loopback() or ip.is_multicast() or ip in _NOT_UNICAST:
            raise InvalidArgument(f"{what} is not a unicast address a guest can ask")
        if ip.version != 4:
            continue
        if ip in (subnet.network, subnet.broadcast):
            raise InvalidArgument(f"{what} is the subnet's network or broadcast address")
        if first <= ip <= last and ip != netaddr.IPAddress(pool.gateway):
            # (the gateway is never a workspace's, also inside the range)
            raise InvalidArgument(
                f"{what} is in the range workspaces' addresses are given from "
                f"({pool.range_start}-{pool.range_end}); give the gateway, or an address "
                "outside the range"
            )


def _dns_address(what: str, text: str) -> netaddr.IPAddress:
    try:
        return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not an address") from exc


def _check_dns_list(name: str, servers: Sequence[str]) -> None:
    """A DNS server list as a request gives it: a guest's resolver asks the first
    ``MAX_DNS_SERVERS`` only, and dnsmasq refuses a DHCP option of more than 63
    addresses ("dhcp-option too long"): every node's DHCP server of the network stopped."""
    if len(servers) > MAX_DNS_SERVERS:
        raise InvalidArgument(
            f"network {name}: {len(servers)} DNS servers given, at most {MAX_DNS_SERVERS} "
            f"(a guest's resolver asks the first {MAX_DNS_SERVERS} only: resolv.conf's MAXNS)"
        )
    seen: set[netaddr.IPAddress] = set()
    for d in servers:
        what = f"network {name}: DNS server {d!r}"
        ip = _dns_address(what, d)
        if ip.version != 4:
            raise InvalidArgument(
                f"{what} is an IPv6 address: networks are IPv4, and guests send no IPv6 "
                "(the nodes' filters drop it); give an IPv4 address"
            )
        if ip in seen:
            raise InvalidArgument(f"{what} is given twice")
        seen.add(ip)


def create_network(env: Env, req: NetworkInfo) -> NetworkInfo:
    if not NET_NAME_RE.fullmatch(req.name):
        raise InvalidArgument(
            f"network name {req.name!r}: 1-63 lowercase letters, digits and '-', starting "
            "with a letter or digit"
        )
    pool = ipam.validate_network(
        req.name, req.subnet, req.gateway, req.range_start, req.range_end, req.mac_prefix
    )
    ipam.check_usable(req.name, pool)
    bridge = req.bridge or bridge_for(req.name)
    if not BRIDGE_RE.fullmatch(bridge):
        raise InvalidArgument(
            f"network {req.name}: bridge name {bridge!r} is not an interface name: 1-15 "
            "letters, digits, '_', '.' and '-', not '.' or '..'"
        )
    check_dns(req.name, req.dns, pool)
    if not (req.vlan == 0 or 1 <= req.vlan <= 4094):
        raise InvalidArgument(
            f"network {req.name}: VLAN id {req.vlan} is out of range 1..4094 (0: untagged)"
        )
    with unit.write(env) as u:  # its site event is published at commit
        s = u.s
        if s.get(Network, req.name) is not None:
            raise AlreadyExists(f"network {req.name!r} already exists")
        others = s.execute(select(Network)).scalars()
        check_apart(req.name, pool.subnet, bridge, req.vlan, others)
        net = Network(
            name=req.name,
            subnet=pool.subnet,
            gateway=pool.gateway,
            range_start=pool.range_start,
            range_end=pool.range_end,
            bridge=bridge,
            mac_prefix=pool.mac_prefix,
            dns=list(req.dns),
            vlan=req.vlan,
        )
        s.add(net)
    log.info(
        "network %s created (%s, bridge %s%s)",
        req.name,
        pool.subnet,
        bridge,
        f", VLAN {req.vlan}" if req.vlan else "",
    )
    return network_info(net, 0)


def list_networks(env: Env, who: Identity | None = None) -> list[NetworkInfo]:
    """Every network, with the addresses in use on it (``allocated``): for an admin (or
    ``who`` None, the service itself) the whole site's; for a user only those of the
    workspaces they see (their own, their projects'), as `ws list` shows them: how many
    other projects run on a network is theirs, not every user's to learn."""
    with env.store.read() as s:
        held = select(IpAllocation.network, func.count())
        if who is not None and not who.admin:
            where = scope(s, who, made=True).clause(Workspace, made=Workspace.created_at)
            held = held.join(Workspace, Workspace.id == IpAllocation.workspace_id).where(
                where if where is not None else false()
            )
        counts = dict(s.execute(held.group_by(IpAllocation.network)).all())
        return [
            network_info(n, int(counts.get(n.name, 0)))
            for n in s.execute(select(Network).order_by(Network.name)).scalars()
        ]


def delete_network(env: Env, name: str) -> NetworkInfo:
    """Remove a network no one uses: no workspace that is not TERMINATED holds an address
    in it or waits for one, no cluster that is not TERMINATED has members on it (a scale
    up would need it) and no backfill entry names it. Refused (FAILED_PRECONDITION)
    naming what uses it; NOT_FOUND if there is no such network. The nodes' agents keep
    their bridge until their own configuration drops it."""
    with unit.write(env) as u:  # its site event is published at commit
        s = u.s
        net = _named(s, name)
        users = _users(s, name)
        if users:
            raise FailedPrecondition(f"network {name} is in use by {'; '.join(users)}")
        info = network_info(net, 0)
        s.delete(net)
        serving = sorted(
            n for n, nets in s.execute(select(Node.name, Node.networks)) if name in nets
        )
    log.info(
        "network %s deleted (%s, bridge %s)%s",
        name,
        info.subnet,
        info.bridge,
        f"; nodes {', '.join(serving)} still list it in their agent.toml" if serving else "",
    )
    return info


def update_network(
    env: Env,
    name: str,
    *,
    dns: Sequence[str] | None = None,
    addresses: tuple[str, str] | None = None,
) -> NetworkInfo:
    """Change network ``name`` in place: its DNS servers (``dns``, none: an empty list)
    and the range addresses are allocated from (``addresses``, first and last; empty
    ones take the defaults ``create_network`` gives). None leaves a field as it is.

    DNS servers: what is made from the network row follows at once: new workspaces'
    seeds, every node's orders (so its DHCP server's option and the filters of
    ``cluster`` NICs), the seeds of workspaces not made on their node yet. A guest
    already made keeps the servers cloud-init gave it at its first boot; one configured
    by DHCP gets the new ones at its next lease.

    The range: grown or moved within the subnet, never so that an address in use falls
    outside it (FAILED_PRECONDITION naming one); creates waiting for an address are
    tried again."""
    seeded = 0
    with unit.write(env) as u:
        s = u.s
        net = _named(s, name)
        if addresses is not None:
            pool = ipam.validate_network(
                name, net.subnet, net.gateway, addresses[0], addresses[1], net.mac_prefix
            )
            ipam.check_usable(name, pool)
            _check_in_range(s, name, pool)
            if (pool.range_start, pool.range_end) != (net.range_start, net.range_end):
                net.range_start, net.range_end = pool.range_start, pool.range_end
                u.capacity()  # creates waiting for an address may fit now
        if dns is not None or addresses is not None:  # against the range as it is now
            now = ipam.validate_network(
                name, net.subnet, net.gateway, net.range_start, net.range_end, net.mac_prefix
            )
            if dns is None:  # the stored list, checked against the new range only
                check_dns(name, net.dns or (), now, given=False)
            else:
                check_dns(name, dns, now)
        if dns is not None and tuple(dns) != tuple(net.dns or ()):
            net.dns = list(dns)  # a new list: the JSON column is seen as changed
            seeded = seeds.rebound(s, name)
            # Every node's orders are computed anew (the catalog changed); those with a
            # workspace on the network are told now.
            u.nodes(*_nodes_using(s, name))
        held = s.scalar(select(func.count()).where(IpAllocation.network == name)) or 0
        info = network_info(net, int(held))
    # What changed, as the journal's network.updated event says it.
    changes = [e.reason for e in u.events if e.kind == Kind.NETWORK_UPDATED.value]
    if changes:
        log.info(
            "network %s: %s%s",
            name,
            changes[0],
            f" ({seeded} live cloud-init workspace(s) on it keep what their first boot set)"
            if seeded
            else "",
        )
    return info


def _check_in_range(s: Session, name: str, pool: ipam.Pool) -> None:
    first = int(netaddr.IPAddress(pool.range_start))
    last = int(netaddr.IPAddress(pool.range_end))
    outside = (
        select(IpAllocation.ip, Workspace.name, Workspace.owner)
        .join(Workspace, Workspace.id == IpAllocation.workspace_id)
        .where(
            IpAllocation.network == name,
            (IpAllocation.ip_int < first) | (IpAllocation.ip_int > last),
        )
    )
    found = s.execute(outside.order_by(IpAllocation.ip_int)).all()
    if found:
        ip, wname, owner = found[0]
        raise FailedPrecondition(
            f"network {name}: {len(found)} address(es) in use lie outside "
            f"{pool.range_start}-{pool.range_end} ({ip} of workspace {wname} ({owner})"
            f"{', ...' if len(found) > 1 else ''}); keep them in the range or destroy "
            "their workspaces first"
        )


def _nodes_using(s: Session, name: str) -> set[str]:
    """The nodes holding a live workspace with a NIC on network ``name``."""
    live = s.execute(
        select(Workspace.node, Workspace.networks).where(
            Workspace.state != State.TERMINATED.value, Workspace.node != ""
        )
    )
    return {node for node, nets in live if name in (nets or ())}


def _named(s: Session, name: str) -> Network:
    """The network an admin's command names: InvalidArgument for no name (it was
    NOT_FOUND, "network '' not found", as if one had been named), NotFound if none has it."""
    if not name:
        raise InvalidArgument("give a network name (`ws-admin network list` shows them)")
    net = s.get(Network, name)
    if net is None:
        raise NotFound(f"network {name!r} not found; `ws-admin network list` shows them")
    return net


def _users(s: Session, name: str, shown: int = 3) -> list[str]:
    """What uses network ``name``, as phrases ("workspaces a (alice), b (bob) and 2
    more"); [] when nothing."""

    def phrase(what: str, names: list[str]) -> str:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return f"{what} {', '.join(sorted(names)[:shown])}{more}"

    live = s.execute(
        select(Workspace.name, Workspace.owner, Workspace.networks).where(
            Workspace.state != State.TERMINATED.value
        )
    )
    workspaces = [f"{n} ({o})" for n, o, nets in live if name in (nets or ())]
    # Destroyed while their node was DOWN: held until it confirms their VMs are gone
    # or an admin removes it (ops/lifecycle.py terminate_unconfirmed).
    for n, o, node in s.execute(
        select(Workspace.name, Workspace.owner, Workspace.node)
        .join(IpAllocation, IpAllocation.workspace_id == Workspace.id)
        .where(IpAllocation.network == name, Workspace.state == State.TERMINATED.value)
        .distinct()
    ):
        workspaces.append(
            f"{n} ({o}; destroyed, its address held until node {node} is back or removed)"
        )
    held = s.scalar(select(func.count()).where(IpAllocation.network == name)) or 0
    if held and not workspaces:  # released with their workspace: not expected, but kept
        workspaces = [f"{held} address(es) not released yet"]
    clusters = [
        f"{n} ({o})"
        for n, o, spec in s.execute(
            select(Cluster.name, Cluster.owner, Cluster.spec).where(
                Cluster.state != ClusterState.TERMINATED.value
            )
        )
        if any(name in (m.get("networks") or ()) for m in spec or ())
    ]
    backfill = [
        image
        for image, nets in s.execute(select(Backfill.image, Backfill.networks))
        if name in (nets or ())
    ]
    # Each with what ends its use: a workspace's or a cluster's networks cannot be
    # changed (the refusal used to say "destroy or change those").
    out = []
    if workspaces:
        out.append(phrase("workspaces", workspaces) + " (`ws destroy NAME --wait` ends each)")
    if clusters:
        out.append(phrase("clusters", clusters) + " (`ws cluster destroy NAME`)")
    if backfill:
        out.append(
            phrase("the backfill entries of images", backfill)
            + " (`ws-admin backfill clear IMAGE`, or `backfill set IMAGE --network` another)"
        )
    return out
