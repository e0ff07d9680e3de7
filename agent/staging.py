"""Blobs on the node for its orders: where to fetch them, pins, and prefetch.

For an order, every blob it uses (disks, kernel, initrd) is pinned to the workspace,
then found in the cache or fetched from the peers the service named (in its order) and
finally the service itself. Every use of a cached blob checks it first: its stat
against the one recorded when it was verified, a re-hash only when that changed
(``images.integrity``). A blob that no longer matches its digest is quarantined, the
order refused (nothing is defined) and the decision audited ("cache-hit", deny); the
next attempt fetches it again.
Prefetch (``ws-admin cache preload``) fetches the blobs the service lists in the
background, from the peers it names for each (as for a disk) and then the service, with
the agent's backoff between failed attempts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.backoff import Backoff, Retries
from agent.cache import BlobCache, BlobCorrupted, Source
from agent.gate import TrustGate
from workspace.domain.model import BlobSources, CacheRecord, Disk, NodeOrders, Order
from workspace.errors import ImageError, Unavailable, WorkspaceError
from workspace.log import about

log = logging.getLogger("agent")

PREFETCH_RETRY = Backoff(4.0, 300.0)


# A peer the service named: (its address, its node; "" from a service that names none).
Peer = tuple[str, str]


def peers_of(named: Disk | BlobSources) -> list[Peer]:
    """The peers the service named for a disk's (or a prefetch) blob, each with its node."""
    nodes = list(named.source_nodes)[: len(named.sources)]
    nodes += [""] * (len(named.sources) - len(nodes))
    return list(zip(named.sources, nodes, strict=True))


def named_sources(orders: NodeOrders) -> dict[str, list[Peer]]:
    """digest → the peers the service named for it: for a prefetch blob, or a disk (the
    first order naming it wins; a service that names none for prefetches still has a
    disk's sources used for the same digest)."""
    out: dict[str, list[Peer]] = {}
    for blob in orders.prefetch_sources:
        if blob.digest and blob.sources:
            out.setdefault(blob.digest, peers_of(blob))
    for order in orders.orders:
        for disk in order.disks:
            if disk.partition.digest and disk.sources:
                out.setdefault(disk.partition.digest, peers_of(disk))
    return out


class Staging:
    def __init__(
        self,
        cache: BlobCache,
        gate: TrustGate,
        peer_source: Callable[[str, str], Source],
        service_source: Source,
        prefetch_parallel: int,
        on_cached: Callable[[], None],
    ) -> None:
        self.cache = cache
        self.gate = gate
        self.peer_source = peer_source
        self.service_source = service_source
        self.on_cached = on_cached  # a new blob is cached: the service should learn it soon
        self.own_address = ""  # this agent's peer address (never a source for itself)
        self._lock = threading.Lock()
        # From the latest orders: blobs to prefetch, peers that hold each digest.
        self._prefetch: list[str] = []
        self._sources: dict[str, list[Peer]] = {}
        self._prefetching: set[str] = set()
        self._prefetch_failures = Retries(PREFETCH_RETRY)
        self._pool = ThreadPoolExecutor(max(1, prefetch_parallel), thread_name_prefix="prefetch")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def take(self, orders: NodeOrders) -> None:
        """Remember what the latest orders ask to prefetch and which peers hold what."""
        with self._lock:
            self._prefetch = list(orders.prefetch)
            self._sources = named_sources(orders)

    def sources(self, peers: list[Peer]) -> list[Source]:
        """Where to fetch a blob: the peers the service named, in its order, then it."""
        out = [self.peer_source(a, n) for a, n in dict.fromkeys(peers) if a != self.own_address]
        out.append(self.service_source)
        return out

    # -- blobs of one order ------------------------------------------------------------

    def ensure(self, order: Order) -> dict[str, Path]:
        """Pin then fetch (or find) every blob ``order`` uses; returns digest → cached path."""
        wanted: dict[str, tuple[int, list[Peer]]] = {}  # digest → (size, peers)
        all_peers: list[Peer] = []
        for disk in order.disks:
            p = disk.partition
            if p.digest:
                wanted[p.digest] = (p.size_bytes, peers_of(disk))
                all_peers += peers_of(disk)
        for digest in (order.kernel_digest, order.initrd_digest):
            if digest and digest not in wanted:
                # No sources in the order for these: peers holding the disks likely hold them.
                wanted[digest] = (0, all_peers)
        self.cache.pin(order.workspace_id, wanted)
        before = set(self.cache.digests())
        paths: dict[str, Path] = {}
        for digest, (size, peers) in wanted.items():
            try:
                self._check_cached(order, digest)
                paths[digest] = self.cache.ensure(digest, self.sources(peers), size)
            except BlobCorrupted as exc:
                self.gate.audit_blob(order, digest, False, exc.message)
                log.error(
                    "workspace %s refused: %s",
                    order.workspace_id,
                    exc.message,
                    extra=about(order.workspace_id),
                )
                raise ImageError(
                    f"image {order.image or '?'}: {exc.message}; refused, nothing was booted"
                ) from exc
            except ImageError as exc:
                raise ImageError(f"image {order.image or '?'}: {exc.message}") from exc
            except Unavailable as exc:
                raise Unavailable(f"image {order.image or '?'}: {exc.message}") from exc
        if set(wanted) - before:
            self.on_cached()  # the service learns at once that this node holds them
        return paths

    def _check_cached(self, order: Order, digest: str) -> None:
        """Check a cached blob before this use (one stat; a re-hash if its file changed
        since it was verified, audited). Raises BlobCorrupted if it no longer matches."""
        checked = self.cache.check(digest)
        if checked is not None and checked.rehashed:
            self.gate.audit_blob(order, digest, True, f"cached {checked.describe(digest)}")

    # -- pins --------------------------------------------------------------------------

    def sync_pins(self, desired: Mapping[str, Order], present: Set[str]) -> None:
        """Pins = the blobs of the workspaces on this node (after a restart, too)."""
        for owner in self.cache.pin_owners() - present:
            self.cache.unpin(owner)
        owners = self.cache.pin_owners()
        for wid in present - owners:
            order = desired.get(wid)
            if order is not None:
                self.cache.pin(wid, order.digests())

    def release(self, workspace_id: str) -> None:
        """The workspace left the node: its blobs may be evicted."""
        self.cache.unpin(workspace_id)

    def records(self) -> list[CacheRecord]:
        return self.cache.entries()

    # -- prefetch ----------------------------------------------------------------------

    def kick_prefetch(self) -> None:
        """Fetch the blobs the service asked for (``cache preload``) in the background."""
        with self._lock:
            todo = [
                d
                for d in dict.fromkeys(self._prefetch)
                if d not in self._prefetching
                and not self._prefetch_failures.waiting(d)
                and not self.cache.has(d)
            ]
            self._prefetching.update(todo)
        for digest in todo:
            self._pool.submit(self._prefetch_one, digest)

    def _prefetch_one(self, digest: str) -> None:
        try:
            with self._lock:
                peers = list(self._sources.get(digest, []))
            self.cache.ensure(digest, self.sources(peers))
            self._prefetch_failures.forget(digest)
            log.info("prefetched %s", digest)
            self.on_cached()
        except Exception as exc:
            _, delay = self._prefetch_failures.failed(digest)
            reason = exc.message if isinstance(exc, WorkspaceError) else repr(exc)
            log.warning("prefetch of %s failed (retry in %.0f s): %s", digest, delay, reason)
        finally:
            with self._lock:
                self._prefetching.discard(digest)
