"""The order size bound used at placement is never below the real protobuf encoding."""

from __future__ import annotations

import pytest

from images.model import Mode, Partition
from workspace import config, rpc
from workspace.codec import node as codec
from workspace.config import LimitsConfig
from workspace.domain.model import Disk, Nic, NodeOrders, Order, Seed
from workspace.domain.states import Desired
from workspace.errors import ConfigError
from workspace.ops.order_size import order_bytes

DIGEST = "sha256:" + "ab" * 32


def _order(i: int, user_data: bytes = b"", cmdline: str = "", envelopes: int = 0) -> Order:
    return Order(
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
    ],
    ids=["plain", "small", "large", "many"],
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
