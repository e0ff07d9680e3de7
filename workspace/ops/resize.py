"""`ws update NAME --cpus N --memory-mib M`: a stopped workspace's size, changed on its node.

Only while the workspace is STOPPED and meant to stay so: the guest sees its new vCPUs
and memory at its next start (the agent sets them in the domain's definition before it
starts it). It stays on its node, which must hold the new size beside what else it holds:
the scheduler's own filters judge that, on the node as it is with this workspace's claim
taken off (a DRAINING node counts as READY here: nothing new goes there, but this is
there already; a DOWN one cannot act, so it refuses). The node's claim and the
workspace's follow, and the project's quotas count the new size. Moving a workspace to
another node is not done: its disks live on this one.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.orm import Session

from workspace import scheduler
from workspace.config import ServiceConfig
from workspace.domain.states import NodeState
from workspace.errors import FailedPrecondition, ResourceExhausted
from workspace.ops import placement
from workspace.ops.create import check_size
from workspace.ops.lifecycle import stopped
from workspace.ops.projects import check_workspace_quota, workspace_use
from workspace.scheduler.model import format_rejections, memory_claim_mib
from workspace.store import Workspace


def resize(
    s: Session, cfg: ServiceConfig, ws: Workspace, cpus: int, memory_mib: int, named: str = ""
) -> str:
    """Give ``ws`` this size (0: unchanged); what changed, as a site event says it
    ("cpus 1 -> 2; memory_mib 512 -> 1024"), "" if nothing. Every check runs before
    anything changes; a quota refusal comes after the flush, and the caller's
    transaction is rolled back with it. ``named``: how the caller names ``ws`` in a
    hint (ops/lifecycle.py ``named_for``; its name by default)."""
    new_cpus, new_memory = cpus or ws.cpus, memory_mib or ws.memory_mib
    if (new_cpus, new_memory) == (ws.cpus, ws.memory_mib):
        return ""
    check_size(new_cpus, new_memory, cfg.limits)
    if not stopped(ws):
        raise FailedPrecondition(
            f"workspace {ws.name} is {ws.state}: its size changes only while it is STOPPED "
            f"(`ws stop {named or ws.name} --wait` first)"
        )
    view = next((v for v in placement.node_views(s) if v.name == ws.node), None)
    if view is None or view.state == NodeState.DOWN.value:
        raise FailedPrecondition(
            f"workspace {ws.name}'s node {ws.node or '(none)'} is "
            f"{'gone' if view is None else 'DOWN'}; it cannot be resized now"
        )
    without = replace(
        view,
        state=NodeState.READY.value,
        used_cpus=view.used_cpus - ws.claimed_cpus,
        used_memory_mib=view.used_memory_mib - ws.claimed_memory_mib,
        used_disk_mbps=view.used_disk_mbps - (ws.claimed_disk_mbps or 0),
        used_net_mbps=view.used_net_mbps - (ws.claimed_net_mbps or 0),
    )
    req = replace(placement.request_for(ws), cpus=new_cpus, memory_mib=new_memory)
    fit = scheduler.place([without], req, cfg.scheduler)
    if fit.node is None:
        cpus_cap, memory_cap = scheduler.capacity(view.cpus, view.memory_mib, cfg.scheduler)
        raise ResourceExhausted(
            f"workspace {ws.name} with {new_cpus} vCPU(s) and {new_memory} MiB does not fit "
            f"on its node {ws.node}: {format_rejections(fit.rejected)} (its other workspaces "
            f"hold {without.used_cpus} of its {cpus_cap} vCPUs and {without.used_memory_mib} "
            f"of its {memory_cap} MiB; this one would claim {new_cpus} vCPUs and "
            f"{memory_claim_mib(cfg.scheduler, req)} MiB with the hypervisor's overhead)"
        )
    what = "; ".join(
        f"{name} {old} -> {new}"
        for name, old, new in (
            ("cpus", ws.cpus, new_cpus),
            ("memory_mib", ws.memory_mib, new_memory),
        )
        if old != new
    )
    placement.claim(
        s,
        ws.node,
        fit.claimed_cpus - ws.claimed_cpus,
        fit.claimed_memory_mib - ws.claimed_memory_mib,
        0,
        0,
    )
    grows = new_cpus > ws.cpus or new_memory > ws.memory_mib
    # What the project used before: the refusal says it (a read only for a growth).
    before = workspace_use(s, ws.project) if grows and ws.project else None
    ws.cpus, ws.memory_mib = new_cpus, new_memory
    ws.claimed_cpus, ws.claimed_memory_mib = fit.claimed_cpus, fit.claimed_memory_mib
    s.flush()
    if grows:  # a shrink is never refused, also in a project over a lowered quota
        check_workspace_quota(
            s,
            ws.project or "",
            f"cannot resize {ws.name}",
            bool(ws.preemptible),
            (ws.id,),  # (stopped, as it must be: not named among the others stopped)
            before=before,
        )
    return what
