"""Recording usage: in the transaction of every state change, the changed workspaces'
consumption intervals are closed and opened (the rule: workspace/domain/usage.py).

Called by the unit of work (ops/unit.py) with the rows an operation changed; kept apart
from ops/usage.py (the reports) so the unit of work does not import the operations.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.domain.usage import Consumption, consumption
from workspace.store import UsageInterval, Workspace, journal
from workspace.store.mapping import STATES, bound_spec, insert_new, new_row

# Ids bound per query (SQLite caps the number of bound parameters).
CHUNK = 500


def use_of(ws: Workspace) -> Consumption:
    """What the workspace consumes now; disk = its partitions' virtual sizes."""
    state = STATES[ws.state]
    disk = sum(p.disk_bytes() for p in bound_spec(ws).partitions) if ws.node else 0
    return consumption(state, ws.node, ws.cpus, ws.memory_mib, disk)


def _open_intervals(s: Session, ids: Sequence[str]) -> dict[str, UsageInterval]:
    found: dict[str, UsageInterval] = {}
    for i in range(0, len(ids), CHUNK):
        q = select(UsageInterval).where(
            UsageInterval.workspace_id.in_(ids[i : i + CHUNK]), UsageInterval.ended_at == 0
        )
        for iv in s.execute(q).scalars():
            found[iv.workspace_id] = iv
    return found


def record(s: Session, rows: Sequence[Workspace], now: float) -> None:
    """Close the open interval of each row whose consumption changed and open the next."""
    if not rows:
        return
    # A workspace made in this transaction has no interval yet (the unit of work records
    # once, at its end: ops/unit.py).
    made = {w.id for w in journal.created(s)}
    open_ = _open_intervals(s, [w.id for w in rows if w.id not in made])
    new: list[UsageInterval] = []
    for ws in rows:
        use = use_of(ws)
        cur = open_.get(ws.id)
        if cur is not None:
            if Consumption(cur.cpus, cur.memory_mib, cur.disk_bytes) == use:
                continue
            if cur.started_at >= now:
                s.delete(cur)  # nothing was consumed at that level
            else:
                cur.ended_at = now
        if use:
            new.append(
                new_row(
                    UsageInterval,
                    workspace_id=ws.id,
                    workspace_name=ws.name,
                    owner=ws.owner,
                    project=ws.project or "",
                    cpus=use.cpus,
                    memory_mib=use.memory_mib,
                    disk_bytes=use.disk_bytes,
                    started_at=now,
                    ended_at=0.0,
                    preemptible=bool(ws.preemptible),
                )
            )
    insert_new(s, new)  # one statement (store/mapping.py)
    s.flush()
