"""Blobs on the node for its orders: where to fetch them, pins, and prefetch.

For an order, every blob it uses (disks, kernel, initrd) is pinned to the workspace,
then found in the cache or fetched from the peers the service named (in its order) and
finally the service itself. A cached blob not yet re-hashed under the current trust
policy version is re-hashed first (a corrupted one is fetched again, and audited).
Prefetch (``ws-admin cache preload``) fetches the blobs the service lists in the
background, with the agent's backoff between failed attempts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.backoff import Backoff, Retries
from agent.cache import BlobCache, Source
from agent.gate import TrustGate
from images import signing
from workspace.domain.model import CacheRecord, NodeOrders, Order
from workspace.errors import ImageError, WorkspaceError

log = logging.getLogger("agent")

PREFETCH_RETRY = Backoff(4.0, 300.0)


def disk_sources(orders: NodeOrders) -> dict[str, list[str]]:
    """digest → the peers the service named for it (the first order naming it wins)."""
    out: dict[str, list[str]] = {}
    for order in orders.orders:
        for disk in order.disks:
            if disk.partition.digest and disk.sources:
                out.setdefault(disk.partition.digest, list(disk.sources))
    return out


class Staging:
    def __init__(
        self,
        cache: BlobCache,
        gate: TrustGate,
        peer_source: Callable[[str], Source],
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
        self._sources: dict[str, list[str]] = {}
        self._prefetching: set[str] = set()
        self._prefetch_failures = Retries(PREFETCH_RETRY)
        self._pool = ThreadPoolExecutor(max(1, prefetch_parallel), thread_name_prefix="prefetch")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def take(self, orders: NodeOrders) -> None:
        """Remember what the latest orders ask to prefetch and which peers hold what."""
        with self._lock:
            self._prefetch = list(orders.prefetch)
            self._sources = disk_sources(orders)

    def sources(self, peers: list[str]) -> list[Source]:
        """Where to fetch a blob: the peers the service named, in its order, then it."""
        out = [self.peer_source(p) for p in dict.fromkeys(peers) if p != self.own_address]
        out.append(self.service_source)
        return out

    # -- blobs of one order ------------------------------------------------------------

    def ensure(self, order: Order) -> dict[str, Path]:
        """Pin then fetch (or find) every blob ``order`` uses; returns digest → cached path."""
        wanted: dict[str, tuple[int, list[str]]] = {}  # digest → (size, peers)
        all_peers: list[str] = []
        for disk in order.disks:
            p = disk.partition
            if p.digest:
                wanted[p.digest] = (p.size_bytes, list(disk.sources))
                all_peers += disk.sources
        for digest in (order.kernel_digest, order.initrd_digest):
            if digest and digest not in wanted:
                # No sources in the order for these: peers holding the disks likely hold them.
                wanted[digest] = (0, all_peers)
        self.cache.pin(order.workspace_id, wanted)
        before = set(self.cache.digests())
        paths: dict[str, Path] = {}
        for digest, (size, peers) in wanted.items():
            self._rehash_if_due(order, digest)
            try:
                paths[digest] = self.cache.ensure(digest, self.sources(peers), size)
            except ImageError as exc:
                raise ImageError(f"image {order.image or '?'}: {exc.message}") from exc
            self.gate.hashed(digest)
        if set(wanted) - before:
            self.on_cached()  # the service learns at once that this node holds them
        return paths

    def _rehash_if_due(self, order: Order, digest: str) -> None:
        """Re-hash a cached blob not yet verified under the current policy version; a
        corrupted one is deleted (``ensure`` then fetches it again) and audited."""
        version = self.gate.rehash_due(digest)
        if version is None:
            return
        intact = self.cache.rehash(digest)
        if intact is None:
            return  # not cached: the fetch hashes it while streaming
        if intact:
            reason = f"cached blob {digest} re-hashed: intact"
        else:
            reason = f"cached blob {digest} does not match its digest; discarded, fetching it again"
            log.error("workspace %s: %s", order.workspace_id, reason)
        self.gate.record(
            "cache-hit", order, signing.Verdict(intact, intact, reason, "", version), digest
        )

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
