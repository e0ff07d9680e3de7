"""Site events of admins' tenancy settings: projects (made, changed, deleted), their
members, and backfill entries. Each is written in the transaction of its change
(store/journal.py ``add``), with who did it (the RPC's caller) and what changed, old ->
new, in the words of the command that changes it (``ws-admin project set --quota
vcpus=16``: ``quota vcpus 8 -> 16``)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from workspace import callctx
from workspace.domain.backfill import BackfillSpec
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.leases import duration_text
from workspace.domain.netpolicy import Limits
from workspace.domain.tenancy import QUOTA_FIELDS, ProjectSpec
from workspace.ops.unit import Env
from workspace.store import journal


def record(env: Env, s: Session, kind: Kind, subject: str, reason: str) -> None:
    """An event of ``kind`` about ``subject`` (a project, an image), by the caller."""
    journal.add(
        s,
        SiteEvent(
            at=env.clock(),
            kind=kind.value,
            who=callctx.current().who,
            subject=subject,
            reason=reason,
        ),
    )


# -- projects --------------------------------------------------------------------------------


def _quota_name(field: str) -> str:
    return field.replace("_", "-")


def _limit(value: int) -> str:
    return str(value) if value else "none"


def _lease(seconds: int) -> str:
    return duration_text(seconds) if seconds else "none"


def _limits(lim: Limits) -> str:
    set_ = [f"{k.replace('_', '-')}={v}" for k, v in lim.as_dict().items() if v]
    return ", ".join(set_) or "none"


def about_project(p: ProjectSpec) -> str:
    """``quota instances=2, vcpus=4; leases default 8h, max 3d, on expiry STOP; default
    limits net-mbps=50`` (the quotas set; every other is no limit)."""
    quota = [f"{_quota_name(f)}={getattr(p.quota, f)}" for f in QUOTA_FIELDS if getattr(p.quota, f)]
    return (
        f"quota {', '.join(quota) or 'none'}; leases default {_lease(p.default_lease_s)}, "
        f"max {_lease(p.max_lease_s)}, on expiry {p.on_expiry.value}; "
        f"default limits {_limits(p.default_limits)}"
    )


def project_changes(before: ProjectSpec, after: ProjectSpec) -> str:
    """What changed, old -> new (``quota vcpus 8 -> 16; max lease 3d -> 7d``); "" if
    nothing did."""
    out = [
        f"quota {_quota_name(f)} {_limit(getattr(before.quota, f))} -> "
        f"{_limit(getattr(after.quota, f))}"
        for f in QUOTA_FIELDS
        if getattr(before.quota, f) != getattr(after.quota, f)
    ]
    for what, old, new in (
        ("default lease", before.default_lease_s, after.default_lease_s),
        ("max lease", before.max_lease_s, after.max_lease_s),
    ):
        if old != new:
            out.append(f"{what} {_lease(old)} -> {_lease(new)}")
    if before.on_expiry != after.on_expiry:
        out.append(f"on expiry {before.on_expiry.value} -> {after.on_expiry.value}")
    if before.default_limits != after.default_limits:
        out.append(
            f"default limits {_limits(before.default_limits)} -> {_limits(after.default_limits)}"
        )
    return "; ".join(out)


# -- backfill --------------------------------------------------------------------------------


def _networks(names: Iterable[str]) -> str:
    return ", ".join(names) or "default"


def about_backfill(b: BackfillSpec) -> str:
    """``max 8, 1 vCPU(s), 512 MiB, grace 30 s, networks default, project grid``."""
    return (
        f"max {b.max_count}, {b.cpus} vCPU(s), {b.memory_mib} MiB, grace {b.grace_s} s, "
        f"networks {_networks(b.networks)}, project {b.project or 'none'}"
    )


def backfill_changes(before: BackfillSpec, after: BackfillSpec) -> str:
    """What changed, old -> new (``max 8 -> 4; project none -> grid``); "" if nothing."""
    pairs = (
        ("max", before.max_count, after.max_count),
        ("vCPUs", before.cpus, after.cpus),
        ("memory MiB", before.memory_mib, after.memory_mib),
        ("grace s", before.grace_s, after.grace_s),
        ("networks", _networks(before.networks), _networks(after.networks)),
        ("project", before.project or "none", after.project or "none"),
    )
    return "; ".join(f"{what} {old} -> {new}" for what, old, new in pairs if old != new)
