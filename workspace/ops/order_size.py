"""A node's orders must always fit in one message: a size bound checked at placement.

A node receives its whole desired state as one AssignmentSet. If that message grew past
the gRPC message limit, the node would never receive another set (other users' stops
and destroys included). So placement refuses a workspace whose order would take its
node's orders over ``limits.max_node_orders_bytes`` (by default half the message limit;
the rest is room for the trust policy and prefetch list).

``wire_bytes`` is an upper bound of the protobuf encoding of a domain value, computed
without protobuf (this is below the edge): every string or bytes field costs its length
plus at most 2 bytes of tag and 5 of length; every number 2 + 10; every nested message
its own bound plus 7. The codec's field numbers are all below 2048, so each tag fits in
2 bytes. ``tests/unit/test_order_size.py`` checks the bound against the real encoding.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from sqlalchemy.orm import Session

from workspace.config import LimitsConfig
from workspace.domain.model import Nic, Order
from workspace.errors import ResourceExhausted
from workspace.ops.reports import build_orders, live_rows
from workspace.store import Workspace

FIELD_BYTES = 2 + 5  # tag + length of a string, bytes or message field
NUMBER_BYTES = 2 + 10  # tag + the longest varint
# A NIC not allocated yet: the longest address, MAC, gateway, bridge and subnet.
_IP6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
_UNALLOCATED_NIC = Nic("", _IP6, "ff:ff:ff:ff:ff:ff", 128, _IP6, "x" * 15, _IP6 + "/128")


class OrdersTooLarge(ResourceExhausted):
    """Placing the workspace would take its node's orders past the message limit."""


def wire_bytes(value: object) -> int:
    """An upper bound of the encoded size of ``value`` as a protobuf field's payload."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, bool | int | float | enum.Enum):
        return 10
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_field_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    raise TypeError(f"no wire size for {type(value).__name__}")


def _field_bytes(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, Mapping):
        return sum(FIELD_BYTES * 2 + wire_bytes(k) + _field_bytes(v) for k, v in value.items())
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return sum(_field_bytes(v) for v in value)
    if isinstance(value, bool | int | float | enum.Enum):
        return NUMBER_BYTES
    return FIELD_BYTES + wire_bytes(value)


def order_bytes(order: Order) -> int:
    """An upper bound of one order's share of its node's AssignmentSet."""
    return _field_bytes(order)


def check_orders_fit(
    s: Session, limits: LimitsConfig, rows: Sequence[Workspace], nodes: Sequence[str]
) -> None:
    """Refuse (OrdersTooLarge) before anything is claimed if placing ``rows`` on ``nodes``
    (one node per row) would take a node's orders past ``limits.max_node_orders_bytes``."""
    budget = limits.max_node_orders_bytes
    by_node: dict[str, list[Workspace]] = {}
    for ws, node in zip(rows, nodes, strict=True):
        by_node.setdefault(node, []).append(ws)
    for node, new in by_node.items():
        have = sum(map(order_bytes, build_orders(s, node, live_rows(s, node))))
        total = have
        for ws, order in zip(new, build_orders(s, node, new), strict=True):
            nics = tuple(
                dataclasses.replace(_UNALLOCATED_NIC, network=n) for n in ws.networks or ()
            )
            size = order_bytes(dataclasses.replace(order, nics=nics))
            total += size
            if total > budget:
                raise OrdersTooLarge(
                    f"{ws.name} does not fit on node {node}: its order ({size} bytes, "
                    f"mostly user-data, kernel cmdline and signatures) would take the node's "
                    f"orders to {total} bytes, over the {budget} bytes one node may be sent "
                    f"(limits.max_node_orders_bytes; {have} bytes are already there); "
                    "use a smaller user-data or kernel cmdline"
                )
