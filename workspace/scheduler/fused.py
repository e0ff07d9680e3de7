"""One pass over the hosts for the common request: the same answer as the filters' and
weighers' list passes (engine.choose_filtered), about a third of their time.

A single VM, or the first member of a group without hard affinity, is filtered only by
what is free (CPUs and memory; a request that reserves bandwidth takes the list passes)
and weighed only by the policy (pack or spread)
and the image cache. For that case the per-filter and per-weigher lists (three to five
passes over every host, each building a list) are one loop that keeps the best host so
far. The score is computed as ``weighers.scores`` computes it, term by term in the same
order, so the winner, ties included (the first host in name order), is the same; the
rejections are counted per filter in the filters' order. Anything else (hard affinity
and anti-affinity, soft affinity with members placed, a weigher or filter added later)
returns None and takes the list passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from workspace.scheduler.filters import DYNAMIC_FILTERS, CpuFilter, MemoryFilter
from workspace.scheduler.model import Request
from workspace.scheduler.snapshot import Context, HostState
from workspace.scheduler.weighers import (
    ImageCacheWeigher,
    PackWeigher,
    SpreadWeigher,
    Weigher,
)

_CPU, _MEMORY = (
    next(f for f in DYNAMIC_FILTERS if isinstance(f, kind)) for kind in (CpuFilter, MemoryFilter)
)


def one_pass(
    hosts: Sequence[HostState], req: Request, ctx: Context, weighers: Sequence[Weigher]
) -> tuple[HostState | None, dict[str, int]] | None:
    """The host ``choose`` would pick among ``hosts`` (the static candidates) and the
    dynamic filters' rejections by reason; None when the request needs more than this
    pass does."""
    for f in DYNAMIC_FILTERS:
        if f is not _CPU and f is not _MEMORY and f.active(req, ctx):
            return None
    policy: Weigher | None = None
    cache: dict[int, float] | None = None
    cache_m = 0.0
    for position, w in enumerate(weighers):
        if not w.active(req, ctx):
            continue
        if position == 0 and isinstance(w, PackWeigher | SpreadWeigher):
            policy = w
        elif isinstance(w, ImageCacheWeigher) and (policy is not None or position == 1):
            cache = ctx.snapshot.cache_weights(req.digests)
            cache_m = w.multiplier
        else:
            return None
    cpus, claim = req.cpus, ctx.memory_claim_mib
    no_cpus = no_memory = 0
    best: HostState | None = None
    if cache is None and policy is not None:
        # One weight, monotonic in the free memory left: compare the integers (a tie is
        # a tie in both; the first host in name order keeps it).
        pack = isinstance(policy, PackWeigher)
        kept = 0
        for h in hosts:
            if h.free_cpus < cpus:
                no_cpus += 1
                continue
            free = h.free_memory_mib
            if free < claim:
                no_memory += 1
                continue
            if best is None or (free < kept if pack else free > kept):
                best, kept = h, free
    else:
        policy_m = policy.multiplier if policy is not None else 0.0
        sign = 1.0 if isinstance(policy, SpreadWeigher) else -1.0
        scale = ctx.snapshot.memory_scale_mib
        best_score = 0.0
        for h in hosts:
            if h.free_cpus < cpus:
                no_cpus += 1
                continue
            free = h.free_memory_mib
            if free < claim:
                no_memory += 1
                continue
            if policy is None:
                score = cache_m * cache.get(h.rank, 0.0) if cache is not None else 0.0
            else:  # as weighers.scores sums them: policy first, then the cache
                left = (free - claim) / scale
                score = policy_m * (left if sign > 0 else 1.0 - left)
                if cache is not None:
                    score = score + cache_m * cache.get(h.rank, 0.0)
            if best is None or score > best_score:
                best, best_score = h, score
    return best, {
        _CPU.reason(req, ctx): no_cpus,
        _MEMORY.reason(req, ctx): no_memory,
    }
