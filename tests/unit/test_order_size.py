"""The order size bound used at placement is never below the real protobuf encoding."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from images.model import Mode, Partition
from workspace import config, rpc
from workspace.codec import node as codec
from workspace.config import LimitsConfig
from workspace.domain import seed
from workspace.domain.model import Disk, Nic, NodeOrders, Order, Seed
from workspace.domain.netpolicy import Connectivity, Limits, parse_rules
from workspace.domain.states import Desired
from workspace.errors import ConfigError
from workspace.ops import keys, order_size, seeds
from workspace.ops.order_size import FIELD_BYTES, order_bytes
from workspace.store import Cluster, Network, Store, Workspace

DIGEST = "sha256:" + "ab" * 32


def _order(
    i: int, user_data: bytes = b"", cmdline: str = "", envelopes: int = 0, policy: bool = False
) -> Order:
    order = Order(
        workspace_id=f"{i:012x}",
        name=f"ws-{i}",
        hostname=f"ws-{i}",
        desired=Desired.RUNNING,
        cpus=64,
        memory_mib=512 * 1024,
        image="team/image:1.0",
        disks=(
            Disk(Partition("root", Mode.COW, DIGEST, 2**40, "qcow2", 2**41), ("peer:7071",) * 3),
            Disk(Partition("scratch", Mode.BLANK, "", 2**30, "raw", 2**30, True)),
        ),
        nics=tuple(
            Nic(f"net{n}", "10.0.0.7", "52:54:00:00:00:01", 24, "10.0.0.1", "wsbr0", "10.0.0.0/24")
            for n in range(8)
        ),
        kernel_digest=DIGEST,
        initrd_digest=DIGEST,
        cmdline=cmdline,
        reboot_count=2**31,
        stop_timeout_s=60,
        force_stop=True,
        seed=Seed(b"", user_data, b"") if user_data else None,
        envelopes=tuple("{" + "e" * 4000 + "}" for _ in range(envelopes)),
        verified_digests=(DIGEST,) * 3,
    )
    if not policy:
        return order
    return replace(
        order,
        nics=tuple(replace(n, vlan=4094) for n in order.nics),
        connectivity=Connectivity.OUTBOUND,
        allow=parse_rules(
            ["tcp/65534-65535:255.255.255.255/32", "icmp", "udp/53", "any:10.0.0.0/8"]
        ),
        limits=Limits(100, 10000, 100_000, 10_000_000, 400_000),
        peers=tuple(f"10.{k // 250}.{k % 250}.255" for k in range(200)),
    )


def _encoded(orders: tuple[Order, ...]) -> int:
    """Bytes the orders add to an AssignmentSet."""
    full = codec.node_orders_to_proto(NodeOrders(2**40, orders)).ByteSize()
    return full - codec.node_orders_to_proto(NodeOrders(2**40, ())).ByteSize()


@pytest.mark.parametrize(
    "orders",
    [
        (_order(1),),
        (_order(1, b"u" * 300, "console=ttyS0"),),
        (_order(1, b"u" * 5_000_000, "c" * 100_000, envelopes=16), _order(2, b"v" * 200)),
        tuple(_order(i, b"x" * 127, "y" * 129, envelopes=1) for i in range(50)),
        tuple(_order(i, b"x" * 127, policy=True) for i in range(20)),
    ],
    ids=["plain", "small", "large", "many", "policy"],
)
def test_the_bound_covers_the_encoding_closely(orders: tuple[Order, ...]) -> None:
    real = _encoded(orders)
    bound = sum(map(order_bytes, orders))
    assert real <= bound
    # Close enough to be useful: within 10% and 1 KiB per order of the real size.
    assert bound <= real * 1.1 + 1024 * len(orders)


def test_the_largest_orders_budget_leaves_room_for_the_policy() -> None:
    assert config.MAX_NODE_ORDERS_BYTES == rpc.MAX_MESSAGE_BYTES * 3 // 4
    assert LimitsConfig().max_node_orders_bytes <= config.MAX_NODE_ORDERS_BYTES
    with pytest.raises(ConfigError, match="max_node_orders_bytes: 12582913 is not between"):
        LimitsConfig(max_node_orders_bytes=config.MAX_NODE_ORDERS_BYTES + 1)


# -- seeds -------------------------------------------------------------------------------------


def _member(name: str, role: str, networks: list[str], user_data: bytes) -> Workspace:
    return Workspace(
        id=f"{abs(hash(name)) % 16**12:012x}",
        name=name,
        owner="alice",
        role=role,
        cluster="c1",
        context="nocloud",
        login_user="debian",
        user_data=user_data,
        networks=networks,
        authorized_keys=[USER_KEY] * 3,
    )


USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFVZbZ3EXhyOoC1P1Sb7GbhLWyH1sVrRfQ2KDW4H7WeS a@b"


@pytest.mark.parametrize("members", [1, 3, 40])
def test_a_seeds_bound_covers_the_seed_it_becomes(tmp_path: Path, members: int) -> None:
    """``seeds.set_cluster_bounds`` at create (addresses not allocated yet) is never below
    the seed rendered once the members are placed, and the order bound of a seeded row
    covers the seed's encoding with the site's vendor-data."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    vendor = b"#cloud-config\npackages: [htop, tmux]\n"
    with store.write() as s:
        for name, subnet in (("default", "10.0.0.0/16"), ("storage", "192.168.100.0/24")):
            s.add(
                Network(
                    name=name,
                    subnet=subnet,
                    gateway="",
                    range_start="",
                    range_end="",
                    bridge="br",
                    mac_prefix="52:54:00",
                    dns=["10.0.0.1", "10.0.0.2"],
                )
            )
        s.flush()
        cluster = Cluster(id="c1", name="mpi", spec=[])
        cluster.key_private, cluster.key_public = keys.new_key_pair()
        rows = []
        for i in range(members):
            role = "head" if i == 0 else "worker"
            index = 0 if i == 0 else i - 1
            w = _member(f"mpi-{role}-{index}", role, ["default", "storage"], b"#!/bin/sh\nx\n")
            w.host_key_private, w.host_key_public = keys.new_key_pair()
            rows.append(w)
        seeds.set_cluster_bounds(s, cluster, rows)
        roster = seed.Roster(
            "mpi",
            tuple(
                seed.Member(
                    w.name,
                    w.role,
                    seed.member_index(w.name),
                    (f"10.0.{i // 250}.{i % 250 + 2}", f"192.168.100.{i % 250 + 2}"),
                    w.host_key_public,
                )
                for i, w in enumerate(rows)
            ),
            cluster.key_private,
            cluster.key_public,
        )
        vendor_bytes = len(seed.multipart(seed.parts_of(vendor, "vendor-data")))
        for i, w in enumerate(rows):
            nics = (
                Nic("default", roster.members[i].addresses[0], "52:54:00:00:00:01", 16, "10.0.0.1",
                    dns=("10.0.0.1", "10.0.0.2")),
                Nic("storage", roster.members[i].addresses[1], "52:54:00:00:00:02", 24, ""),
            )  # fmt: skip
            real = seed.render(
                w.name, w.id, nics, w.user_data, vendor, w.authorized_keys,
                (w.host_key_private, w.host_key_public), "debian", roster,
            )  # fmt: skip
            encoded = codec.seed_to_proto(real)
            assert encoded is not None
            bound = order_size.seed_bytes(w.seed_bytes, 1, vendor_bytes)
            assert encoded.ByteSize() + FIELD_BYTES <= bound
            assert bound <= (encoded.ByteSize() + FIELD_BYTES) * 1.2 + 1024  # and close
    store.close()
