"""Backfill entries: proto (workspace.v1 Admin) ⇄ domain (workspace/domain/backfill.py)."""

from __future__ import annotations

from workspace.domain.backfill import BackfillSpec, BackfillView
from workspace.v1 import admin_pb2


def entry_from_proto(e: admin_pb2.BackfillEntry) -> BackfillSpec:
    return BackfillSpec(
        image=e.image,
        max_count=e.max,
        cpus=e.cpus,
        memory_mib=e.memory_mib,
        networks=tuple(e.networks),
        grace_s=e.grace_s,
        project=e.project,
    )


def entry_to_proto(v: BackfillView) -> admin_pb2.BackfillEntry:
    s = v.spec
    return admin_pb2.BackfillEntry(
        image=s.image,
        max=s.max_count,
        cpus=s.cpus,
        memory_mib=s.memory_mib,
        networks=list(s.networks),
        grace_s=s.grace_s,
        project=s.project,
        owner=v.owner,
        live=v.live,
        running=v.running,
    )
