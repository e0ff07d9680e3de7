"""What the site holds now, read cheaply for metrics at scrape time (service/metrics.py):
workspaces by state (one GROUP BY), the capacity queue, each node's capacity and use."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from workspace.domain.states import Desired, State
from workspace.ops.unit import Env
from workspace.store import Node, Workspace


@dataclass(frozen=True)
class NodeUse:
    name: str
    state: str
    cpus: int
    memory_mib: int
    used_cpus: int
    used_memory_mib: int


@dataclass(frozen=True)
class SiteGauges:
    workspaces: dict[str, int] = field(default_factory=dict)  # state → count
    queue_depth: int = 0
    oldest_queued_at: float = 0.0  # 0 = nothing waits
    nodes: list[NodeUse] = field(default_factory=list)


def read(env: Env) -> SiteGauges:
    with env.store.read() as s:
        by_state = {
            str(state): int(n)
            for state, n in s.execute(
                select(Workspace.state, func.count()).group_by(Workspace.state)
            ).all()
        }
        depth, oldest = s.execute(
            select(func.count(), func.min(Workspace.created_at)).where(
                Workspace.state == State.PENDING.value,
                Workspace.node == "",
                Workspace.desired_state != Desired.TERMINATED.value,
            )
        ).one()
        nodes = [
            NodeUse(*row)
            for row in s.execute(
                select(
                    Node.name,
                    Node.state,
                    Node.cpus,
                    Node.memory_mib,
                    Node.used_cpus,
                    Node.used_memory_mib,
                ).order_by(Node.name)
            ).all()
        ]
    return SiteGauges(by_state, int(depth or 0), float(oldest or 0.0), nodes)
