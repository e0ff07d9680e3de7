"""A node's orders must always fit in one message: a size bound checked at placement.

A node receives its whole desired state as one AssignmentSet. If that message grew past
the gRPC message limit, the node would never receive another set (other users' stops
and destroys included). So placement refuses a workspace whose order would take its
node's orders over ``limits.max_node_orders_bytes`` (by default half the message limit;
the rest is room for the trust policy, the prefetch list with its peers and the peer
grants, at most ``grants.MAX_GRANTS`` of ~150 bytes).

``wire_bytes`` is an upper bound of the protobuf encoding of a domain value, computed
without protobuf (this is below the edge): every string field costs its length plus 2
bytes of tag and its length's varint (many are short: peers' addresses, allow rules),
bytes fields their length plus at most 2 + 5; every number 2 + 10; every nested message
its own bound plus 7. A CLUSTER workspace's order lists every member's addresses
(``PEER_BYTES`` each, counted from the cluster's allocations and the members placed
with it). The codec's field numbers are all below 2048, so each tag fits in
2 bytes. ``tests/unit/test_order_size.py`` checks the bound against the real encoding.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Text, and_, bindparam, case, cast, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from images.model import ImageSpec
from workspace.config import LimitsConfig
from workspace.domain.model import Disk, Nic, Order
from workspace.domain.states import Desired, State
from workspace.errors import ResourceExhausted
from workspace.store import IpAllocation, Network, Node, Workspace, orders_gen
from workspace.store.mapping import flushed
from workspace.store.models import ImageSignature
from workspace.store.prepared import Prepared

# Peers named as sources of one blob in an order (ops/reports.py names them).
MAX_SOURCES = 3
FIELD_BYTES = 2 + 5  # tag + length of a string, bytes or message field
NODE_NAME_BYTES = 63  # the longest node name (identity.NAME_RE)
# The seed message in an order and its three fields.
SEED_FIELDS_BYTES = 4 * FIELD_BYTES
NUMBER_BYTES = 2 + 10  # tag + the longest varint
# A NIC not allocated yet: the longest address, MAC, gateway, bridge and subnet.
_IP6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
_UNALLOCATED_NIC = Nic("", _IP6, "ff:ff:ff:ff:ff:ff", 128, _IP6, "x" * 15, _IP6 + "/128")
# One address of Order.peers (a CLUSTER workspace's order lists every member's).
PEER_BYTES = FIELD_BYTES + len(_IP6)
CLUSTER = "cluster"  # Workspace.connectivity of a workspace whose order carries peers


def seed_bytes(bound: int, count: int = 1, vendor_bytes: int = 0) -> int:
    """An upper bound of ``count`` seeds whose stored bounds (``seed_bytes`` columns) sum
    to ``bound``, with their fields and the site's vendor-data (``vendor_bytes``)."""
    if not count:
        return 0
    return bound + count * (SEED_FIELDS_BYTES + vendor_bytes)


class OrdersTooLarge(ResourceExhausted):
    """Placing the workspace would take its node's orders past the message limit
    (``node``: that node; "" for a check not about one placement)."""

    def __init__(self, message: str, node: str = "") -> None:
        super().__init__(message)
        self.node = node


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


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field_bytes(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, str):  # tag + the length's varint + the text (many are short)
        n = len(value.encode())
        return 2 + _varint_bytes(n) + n
    if isinstance(value, Mapping):
        return sum(FIELD_BYTES * 2 + wire_bytes(k) + _field_bytes(v) for k, v in value.items())
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return sum(_field_bytes(v) for v in value)
    if isinstance(value, bool | int | float | enum.Enum):
        return NUMBER_BYTES
    return FIELD_BYTES + wire_bytes(value)


@functools.lru_cache(maxsize=1024)
def nic_bytes(network: str, bridge: str, subnet: str, dns: tuple[str, ...]) -> int:
    """An upper bound of a NIC's order on ``network`` (its addresses the longest there
    are): a pure function of the network's fields, kept across transactions."""
    nic = dataclasses.replace(
        _UNALLOCATED_NIC, network=network, bridge=bridge, subnet=subnet, dns=dns
    )
    return _field_bytes(max(nic, _UNALLOCATED_NIC, key=_field_bytes))


def order_bytes(order: Order) -> int:
    """An upper bound of one order's share of its node's AssignmentSet."""
    return _field_bytes(order)


@dataclasses.dataclass(frozen=True)
class _Row:
    """What an order's size depends on beyond its fixed-size numbers."""

    id: str
    name: str
    image: str
    image_spec: Mapping[str, Any]
    seed_bytes: int  # the row's bound of its seed without vendor-data (0: no seed)
    networks: tuple[str, ...]
    allow: tuple[str, ...] = ()  # its allow rules (canonical texts)


# Skeleton bounds by (image and spec, source bytes): a pure function of them, kept across
# transactions (bounded).
_skeletons: dict[tuple[str, int], int] = {}
MAX_SKELETONS = 4096


# s.info key: image → its signature envelopes as read in this transaction (ops/trust.py
# fills and forgets it; a create's trust check reads them before its order is sized).
ENVELOPES_READ = "trust.envelopes"

# Statements every create runs, built once (building one costs more than running it).
_LONGEST_PEER = Prepared(select(func.max(func.length(Node.peer_address))))
_ENVELOPES = Prepared(
    select(ImageSignature.envelope).where(ImageSignature.image == bindparam("image"))
)
_ORDERS_GEN = Prepared(select(Node.orders_gen).where(Node.name == bindparam("node")))


class _Sizer:
    """Upper bounds of orders from plain columns, without loading user-data or building
    Orders: one order is the bound of its skeleton (numbers, strings, partitions; cached
    per image spec) plus its user-data, NICs (the longest addresses, the network's
    bridge, subnet and DNS), peer sources (MAX_SOURCES of the longest peer address and
    node name per blob) and its image's signatures."""

    def __init__(self, s: Session, vendor_bytes: int = 0) -> None:
        self.s = s
        # What the site's vendor-data adds to every seed.
        self.vendor_bytes = vendor_bytes
        longest = _LONGEST_PEER.scalar(flushed(s))
        # Each source: its address and its node's name.
        self.source_bytes = MAX_SOURCES * (2 * FIELD_BYTES + int(longest or 0) + NODE_NAME_BYTES)
        self._nics: dict[str, int] = {}
        self._envelopes: dict[str, int] = {}

    def row_bytes(self, r: _Row) -> int:
        # repr: a third of json.dumps(sort_keys) here; equal specs whose keys came in
        # another order only miss the cache.
        key = (f"{r.image}\0{r.image_spec!r}", self.source_bytes)
        skeleton = _skeletons.get(key)
        if skeleton is None:
            spec = ImageSpec.from_dict(r.image_spec or {}, r.image)
            order = Order(
                workspace_id="",
                name="",
                hostname="",
                desired=Desired.RUNNING,
                cpus=0,
                memory_mib=0,
                image=r.image,
                disks=tuple(Disk(p) for p in spec.partitions),
                nics=(),
                kernel_digest=spec.kernel_digest,
                initrd_digest=spec.initrd_digest,
                cmdline=spec.cmdline,
                verified_digests=tuple(spec.digests()),
            )
            blobs = sum(1 for p in spec.partitions if p.digest)
            skeleton = order_bytes(order) + blobs * self.source_bytes
            if len(_skeletons) >= MAX_SKELETONS:
                _skeletons.clear()
            _skeletons[key] = skeleton
        return (
            skeleton
            + len(r.id.encode())
            + 2 * len(r.name.encode())
            + self.seed_bytes(r.seed_bytes)
            + sum(self._nic_bytes(n) for n in r.networks)
            + self._envelope_bytes(r.image)
            + sum(FIELD_BYTES + len(a.encode()) for a in r.allow)
        )

    def seed_bytes(self, bound: int, count: int = 1) -> int:
        return seed_bytes(bound, count, self.vendor_bytes)

    def _nic_bytes(self, network: str) -> int:
        if network not in self._nics:
            net = self.s.get(Network, network)
            self._nics[network] = nic_bytes(
                network,
                net.bridge if net else _UNALLOCATED_NIC.bridge,
                net.subnet if net else _UNALLOCATED_NIC.subnet,
                tuple(net.dns or ()) if net else (),
            )
        return self._nics[network]

    def _envelope_bytes(self, image: str) -> int:
        if image not in self._envelopes:
            found = self.s.info.get(ENVELOPES_READ, {}).get(image)
            if found is None:
                found = [r[0] for r in _ENVELOPES.rows(flushed(self.s), {"image": image})]
            self._envelopes[image] = sum(FIELD_BYTES + len(e.encode()) for e in found)
        return self._envelopes[image]


# s.info key: running totals of the nodes' orders in this transaction (node → bytes), on
# while a batch of creates runs (ops/group_commit.py): a node's total is read from the
# store once per batch, then each create placed there adds its order's bound.
TOTALS_KEY = "order_size.totals"


# Bounds of the nodes' orders computed in earlier transactions, per database: (node,
# vendor_bytes, source_bytes) → (the node's orders_gen then, the bound). Valid while the
# node's generation is that one (store/orders_gen.py: any change to what the node is sent
# gives it a new random one, in whichever replica it is made).
_bounds: weakref.WeakKeyDictionary[Engine, dict[tuple[str, int, int], tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)
_bounds_lock = threading.Lock()
# s.info key: node → (vendor_bytes, source_bytes) of its running total (``remember``).
_TOTALS_KEYS = "order_size.totals_keys"


def _engine(s: Session) -> Engine:
    bind = s.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def _cached(s: Session) -> dict[tuple[str, int, int], tuple[int, int]]:
    return _cached_for(_engine(s))


def _cached_for(engine: Engine) -> dict[tuple[str, int, int], tuple[int, int]]:
    """The cached bounds of ``engine``'s database (tests read them)."""
    with _bounds_lock:
        found = _bounds.get(engine)
        if found is None:
            found = _bounds[engine] = {}
        return found


def node_bound(s: Session, node: str, vendor_bytes: int = 0) -> int:
    """``node_orders_bytes``, from the cache when the node's generation is the one it was
    computed at (one read of ``Node.orders_gen``); computed and cached otherwise. A node
    this transaction changed already is always computed (its generation changes only at
    the commit)."""
    sizer = sizer_of(s, vendor_bytes)
    key = (node, vendor_bytes, sizer.source_bytes)
    gen = _ORDERS_GEN.scalar(flushed(s), {"node": node})
    fresh = bool(gen) and not orders_gen.pending(s, node)
    cache = _cached(s)
    if fresh:
        hit = cache.get(key)
        if hit is not None and hit[0] == gen:
            return hit[1]
    total = node_orders_bytes(s, node, vendor_bytes)
    if fresh:
        with _bounds_lock:
            cache[key] = (int(gen or 0), total)
    return total


def remember(s: Session) -> None:
    """After ``s`` committed (a batch whose running totals were kept, ``keep_totals``):
    the totals are the bounds of the nodes at the generation the commit gave them."""
    after = s.info.get(orders_gen.AFTER)
    totals: dict[str, int] | None = s.info.get(TOTALS_KEY)
    keys: dict[str, tuple[int, int]] = s.info.get(_TOTALS_KEYS, {})
    if after is None or not totals:
        return
    gen, bumped = after
    cache = _cached(s)
    with _bounds_lock:
        for node, total in totals.items():
            if node in keys and (bumped is None or node in bumped):
                vendor_bytes, source_bytes = keys[node]
                cache[(node, vendor_bytes, source_bytes)] = (gen, total)


def keep_totals(s: Session) -> None:
    """Keep running totals for the rest of ``s``'s transaction; call again after rolling
    back to a SAVEPOINT (they start over from the store). Only for a transaction whose
    only change to the nodes' orders is placing rows checked here."""
    s.info[TOTALS_KEY] = {}


def sizer_of(s: Session, vendor_bytes: int = 0) -> _Sizer:
    """The transaction's sizer (one per session and ``vendor_bytes``: what it caches, the
    longest peer address, NIC and signature bounds, is read once per transaction)."""
    key = ("order_size.sizer", vendor_bytes)
    sizer = s.info.get(key)
    if sizer is None:
        sizer = s.info[key] = _Sizer(s, vendor_bytes)
    return sizer


def node_orders_bytes(s: Session, node: str, vendor_bytes: int = 0) -> int:
    """An upper bound of the orders ``node`` is sent now (its live workspaces), summed in
    SQL over workspaces of one image spec and one set of networks (no user-data loaded).
    A seed counts its bound stored at create (``seed_bytes``) and ``vendor_bytes``."""
    sizer = sizer_of(s, vendor_bytes)
    spec_text = cast(Workspace.image_spec, Text)
    nets_text = cast(Workspace.networks, Text)
    allow_text = cast(Workspace.allow, Text)
    q = (
        select(
            Workspace.image,
            spec_text,
            nets_text,
            allow_text,
            func.count(),
            func.sum(func.length(Workspace.id)),
            func.sum(func.length(Workspace.name)),
            func.sum(Workspace.seed_bytes),
            func.sum(case((Workspace.seed_bytes > 0, 1), else_=0)),
            func.sum(
                case((and_(Workspace.cluster != "", Workspace.connectivity == CLUSTER), 1), else_=0)
            ),
        )
        .where(
            Workspace.node == node,
            Workspace.desired_state != Desired.TERMINATED.value,
            Workspace.state != State.TERMINATED.value,
        )
        .group_by(Workspace.image, spec_text, nets_text, allow_text)
    )
    total = 0
    listing_peers = 0  # CLUSTER members on the node: only then are peers counted
    for image, spec, nets, allow, count, ids, names, seed_bytes, seeded, cl in s.execute(q):
        listing_peers += int(cl or 0)
        one = _Row(
            "",
            "",
            image,
            json.loads(spec or "{}"),
            0,
            tuple(json.loads(nets or "[]")),
            tuple(json.loads(allow or "[]")),
        )
        # The bound of one such order with empty id, name and user-data, times the count,
        # plus the real lengths (the "" fields already counted their tag and length).
        total += count * sizer.row_bytes(one) + int(ids or 0) + 2 * int(names or 0)
        total += sizer.seed_bytes(int(seed_bytes or 0), int(seeded or 0))
    if listing_peers:
        total += peers_bytes(s, node)
    return total


def _live() -> tuple[Any, ...]:
    return (
        Workspace.desired_state != Desired.TERMINATED.value,
        Workspace.state != State.TERMINATED.value,
    )


def cluster_rows_on(s: Session, node: str) -> dict[str, int]:
    """Cluster → how many of its CLUSTER-connectivity members ``node`` holds."""
    q = (
        select(Workspace.cluster, func.count())
        .where(Workspace.node == node, Workspace.cluster != "", Workspace.connectivity == CLUSTER)
        .where(*_live())
        .group_by(Workspace.cluster)
    )
    return {c: int(n) for c, n in s.execute(q)}


def member_nodes(s: Session, clusters: Iterable[str]) -> list[str]:
    """The nodes holding live CLUSTER-connectivity members of ``clusters``."""
    names = sorted(clusters)
    if not names:
        return []
    q = (
        select(Workspace.node)
        .where(
            Workspace.cluster.in_(names),
            Workspace.node != "",
            Workspace.connectivity == CLUSTER,
        )
        .where(*_live())
        .distinct()
        .order_by(Workspace.node)
    )
    return list(s.scalars(q))


def cluster_addresses(s: Session, clusters: Sequence[str]) -> dict[str, int]:
    """Cluster → how many addresses its live members hold now."""
    if not clusters:
        return {}
    q = (
        select(Workspace.cluster, func.count(IpAllocation.id))
        .join(IpAllocation, IpAllocation.workspace_id == Workspace.id)
        .where(Workspace.cluster.in_(sorted(clusters)), Workspace.state != State.TERMINATED.value)
        .group_by(Workspace.cluster)
    )
    return {c: int(n) for c, n in s.execute(q)}


def peers_bytes(s: Session, node: str) -> int:
    """An upper bound of the peers the CLUSTER workspaces on ``node`` are sent."""
    on_node = cluster_rows_on(s, node)
    have = cluster_addresses(s, list(on_node))
    return sum(n * have.get(c, 0) * PEER_BYTES for c, n in on_node.items())


def _new_peers(s: Session, rows: Sequence[Workspace]) -> tuple[dict[str, int], dict[str, int]]:
    """For the clusters of ``rows`` (being placed, not yet addressed): how many
    addresses each will have, and how many ``rows`` add."""
    added: dict[str, int] = {}
    for ws in rows:
        if ws.cluster:
            added[ws.cluster] = added.get(ws.cluster, 0) + len(ws.networks or ())
    have = cluster_addresses(s, list(added))
    return {c: have.get(c, 0) + n for c, n in added.items()}, added


def check_orders_fit(
    s: Session,
    limits: LimitsConfig,
    rows: Sequence[Workspace],
    nodes: Sequence[str],
    vendor_bytes: int = 0,
) -> None:
    """Refuse (OrdersTooLarge) before anything is claimed if placing ``rows`` on ``nodes``
    (one node per row) would take a node's orders past ``limits.max_node_orders_bytes``
    (``vendor_bytes``: what the site's vendor-data adds to each seed)."""
    budget = limits.max_node_orders_bytes
    totals: dict[str, int] | None = s.info.get(TOTALS_KEY)
    by_node: dict[str, list[Workspace]] = {}
    for ws, node in zip(rows, nodes, strict=True):
        by_node.setdefault(node, []).append(ws)
    sizer = sizer_of(s, vendor_bytes)
    peers_after, peers_added = _new_peers(s, rows)
    # The nodes of the clusters' older CLUSTER members too: their orders list the new ones.
    for node in member_nodes(s, peers_added):
        by_node.setdefault(node, [])
    # The running totals change only once every node passed: a refusal (and the
    # placement tried again without that node, ops/placement.py) leaves them as they were.
    after: dict[str, int] = {}
    for node, new in by_node.items():
        have = totals.get(node) if totals is not None else None
        if have is None:
            have = node_bound(s, node, vendor_bytes)
        total = have
        if peers_added:  # the node's CLUSTER members of these clusters list the new ones
            on_node = cluster_rows_on(s, node)
            total += sum(on_node.get(c, 0) * n * PEER_BYTES for c, n in peers_added.items())
        for ws in new:
            size = sizer.row_bytes(
                _Row(
                    ws.id,
                    ws.name,
                    ws.image,
                    ws.image_spec or {},
                    ws.seed_bytes or 0,
                    tuple(ws.networks or ()),
                    tuple(ws.allow or ()),
                )
            )
            if ws.cluster and ws.connectivity == CLUSTER:
                size += peers_after.get(ws.cluster, 0) * PEER_BYTES
            total += size
            if total > budget:
                raise OrdersTooLarge(
                    f"{ws.name} does not fit on node {node}: its order ({size} bytes, "
                    f"mostly user-data, kernel cmdline and signatures) would take the node's "
                    f"orders to {total} bytes, over the {budget} bytes one node may be sent "
                    f"(limits.max_node_orders_bytes; {have} bytes are already there); "
                    "use a smaller user-data or kernel cmdline (a cluster member's seed "
                    "also lists every member)",
                    node,
                )
        if not new and total > have and total > budget:
            added = sum(peers_added.values())
            raise OrdersTooLarge(
                f"node {node} holds members of the cluster whose orders list every member's "
                f"address: {added} more would take its orders to {total} bytes, over the "
                f"{budget} bytes one node may be sent (limits.max_node_orders_bytes; {have} "
                "bytes are already there)"
            )
        after[node] = total
    if totals is not None:
        keys = s.info.setdefault(_TOTALS_KEYS, {})
        for node, total in after.items():
            keys[node] = (vendor_bytes, sizer.source_bytes)
            totals[node] = total


def check_signature_fits(s: Session, limits: LimitsConfig, image: str, envelope: str) -> None:
    """Refuse (OrdersTooLarge) a new signature of ``image`` that would take a node's
    orders past ``limits.max_node_orders_bytes``: every order of the image carries the
    image's signatures, so it grows each of them."""
    extra = FIELD_BYTES + len(envelope.encode())
    q = (
        select(Workspace.node, func.count())
        .where(
            Workspace.image == image,
            Workspace.node != "",
            Workspace.desired_state != Desired.TERMINATED.value,
            Workspace.state != State.TERMINATED.value,
        )
        .group_by(Workspace.node)
    )
    for node, count in s.execute(q):
        have = node_orders_bytes(s, node)
        if have + count * extra > limits.max_node_orders_bytes:
            raise OrdersTooLarge(
                f"image {image}: the signature would take node {node}'s orders to "
                f"{have + count * extra} bytes ({count} workspace(s) of the image there, "
                f"each sent its signatures), over the {limits.max_node_orders_bytes} bytes "
                "one node may be sent (limits.max_node_orders_bytes)"
            )
