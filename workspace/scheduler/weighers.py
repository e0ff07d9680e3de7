"""Weighers: order the hosts that passed every filter; the highest total weight wins.

A host's score is the sum, over active weighers in :func:`weighers_for` order, of
``multiplier * weight``. Weights are computed per host without looking at the other hosts,
so a score can be explained on its own; ties go to the first host in name order.

The default multipliers make the order effectively lexicographic:

* soft (anti-)affinity (x1000 per group member on the node) beats
* the image cache (x100 times the fraction of the request's blobs cached, under pack and
  first fit; not weighed under spread unless ``image_cache_weight`` says), which beats
* the policy (x1, a weight within [0, 1]): pack, spread, or first fit.

``weigh_all`` is the implementation; ``weigh`` is defined through it, so a weight shown by
``explain`` is bit-for-bit the one the placement used.
"""

from __future__ import annotations

from collections.abc import Sequence

from workspace.config import SchedulerConfig
from workspace.scheduler.model import Affinity, Request
from workspace.scheduler.snapshot import Context, HostState


class Weigher:
    name = "weigher"
    multiplier = 1.0

    def active(self, req: Request, ctx: Context) -> bool:
        """False when the weigher would give every host the same weight (it is skipped)."""
        return True

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        raise NotImplementedError

    def weigh(self, host: HostState, req: Request, ctx: Context) -> float:
        return self.weigh_all([host], req, ctx)[0]


class PackWeigher(Weigher):
    """Best fit: the less memory a host has left after the placement, the better."""

    name = "pack"

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        claim, scale = ctx.memory_claim_mib, ctx.snapshot.memory_scale_mib
        return [1.0 - (h.free_memory_mib - claim) / scale for h in hosts]


class SpreadWeigher(Weigher):
    """Worst fit: the more memory a host has left after the placement, the better."""

    name = "spread"

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        claim, scale = ctx.memory_claim_mib, ctx.snapshot.memory_scale_mib
        return [(h.free_memory_mib - claim) / scale for h in hosts]


class FirstFitWeigher(Weigher):
    """First fit in name order: every host weighs the same, so the name tie-break decides."""

    name = "first"

    def active(self, req: Request, ctx: Context) -> bool:
        return False

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        return [0.0] * len(hosts)


class ImageCacheWeigher(Weigher):
    """Prefer hosts that already cache the request's blobs (no download before boot)."""

    name = "image-cache"
    multiplier = 100.0

    def active(self, req: Request, ctx: Context) -> bool:
        return ctx.snapshot.cache_weights(req.digests) is not None

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        weights = ctx.snapshot.cache_weights(req.digests)
        if weights is None:
            return [0.0] * len(hosts)
        return [weights.get(h.rank, 0.0) for h in hosts]


class SoftAntiAffinityWeigher(Weigher):
    """SOFT_ANTI: each member of the group already on a host costs it one unit."""

    name = "soft-anti-affinity"
    multiplier = 1000.0

    def active(self, req: Request, ctx: Context) -> bool:
        return ctx.affinity is Affinity.SOFT_ANTI and ctx.group_placed > 0

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        return [-float(h.group_members) for h in hosts]


class SoftAffinityWeigher(Weigher):
    """SOFT: each member of the group already on a host earns it one unit."""

    name = "soft-affinity"
    multiplier = 1000.0

    def active(self, req: Request, ctx: Context) -> bool:
        return ctx.affinity is Affinity.SOFT and ctx.group_placed > 0

    def weigh_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[float]:
        return [float(h.group_members) for h in hosts]


POLICIES: dict[str, Weigher] = {
    "pack": PackWeigher(),
    "spread": SpreadWeigher(),
    "first": FirstFitWeigher(),
}
_AFFINITY: tuple[Weigher, ...] = (SoftAntiAffinityWeigher(), SoftAffinityWeigher())
# The image cache's multiplier when the config leaves it to the policy (-1): spread is
# asked to spread, so the cache does not pull every launch of an image onto one node.
CACHE_WEIGHT = {"pack": 100.0, "spread": 0.0, "first": 100.0}
_BUILT: dict[tuple[str, float], tuple[Weigher, ...]] = {}


def cache_weight(cfg: SchedulerConfig) -> float:
    """The image cache's multiplier under ``cfg`` (0: the cache is not weighed)."""
    if cfg.image_cache_weight >= 0:
        return cfg.image_cache_weight
    return CACHE_WEIGHT.get(cfg.policy, 100.0)


def weighers_for(cfg: SchedulerConfig) -> tuple[Weigher, ...]:
    """The weighers of ``cfg.policy``, in the order their products are summed."""
    try:
        policy = POLICIES[cfg.policy]
    except KeyError:
        names = ", ".join(POLICIES)
        raise ValueError(f"unknown scheduler policy {cfg.policy!r}; use one of {names}") from None
    key = (cfg.policy, cache_weight(cfg))
    built = _BUILT.get(key)
    if built is None:
        cache: tuple[Weigher, ...] = ()
        if key[1] > 0:
            w = ImageCacheWeigher()
            w.multiplier = key[1]
            cache = (w,)
        built = _BUILT[key] = (policy, *cache, *_AFFINITY)
    return built


def scores(
    hosts: Sequence[HostState], req: Request, ctx: Context, weighers: Sequence[Weigher]
) -> list[float] | None:
    """Total weight per host (None when no weigher is active: every host ties)."""
    total: list[float] | None = None
    for w in weighers:
        if not w.active(req, ctx):
            continue
        m = w.multiplier
        values = w.weigh_all(hosts, req, ctx)
        if total is None:
            total = [m * v for v in values]
        else:
            total = [t + m * v for t, v in zip(total, values, strict=True)]
    return total


def best(
    hosts: Sequence[HostState], req: Request, ctx: Context, weighers: Sequence[Weigher]
) -> int:
    """Index in ``hosts`` (which is in name order) of the winner: highest score, then name."""
    total = scores(hosts, req, ctx, weighers)
    if total is None:
        return 0
    return total.index(max(total))
