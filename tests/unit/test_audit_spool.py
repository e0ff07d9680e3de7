"""The agent's audit spool (agent/audit.py): records survive a crash until acknowledged."""

from __future__ import annotations

from pathlib import Path

from agent.audit import AuditSpool
from workspace.domain.model import AuditRecord


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        at=1_700_000_000.0 + n,
        where="node:n1",
        action="boot",
        image="app:1",
        digest="sha256:" + "1" * 64,
        key_id="k",
        policy_version=3,
        verdict="allow",
        reason=f"entry {n}",
        workspace_id=f"w{n}",
    )


def test_records_are_on_disk_before_they_are_sent(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path)
    spool.add(_record(1))
    spool.add(_record(2))
    # A crash now: a new agent finds both, in order.
    assert AuditSpool(tmp_path).pending() == [_record(1), _record(2)]


def test_acknowledged_records_are_gone_after_a_restart(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path)
    spool.add(_record(1))
    batch = spool.take()
    spool.add(_record(2))  # taken after the batch: not part of it
    assert batch.records == (_record(1),)
    spool.acked(batch)
    assert spool.pending() == [_record(2)]
    assert AuditSpool(tmp_path).pending() == [_record(2)]
    spool.acked(spool.take())
    assert AuditSpool(tmp_path).pending() == []
    assert spool.path.read_text() == ""


def test_a_failed_send_keeps_them_for_the_next_report(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path)
    spool.add(_record(1))
    batch = spool.take()
    assert spool.take().records == ()  # being sent: not taken twice
    spool.failed(batch)
    again = spool.take()
    assert again.records == (_record(1),)
    assert AuditSpool(tmp_path).pending() == [_record(1)]


def test_a_line_cut_short_by_a_crash_is_dropped(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path)
    spool.add(_record(1))
    with spool.path.open("a") as f:
        f.write('{"at": 1.0, "where": "node:n1", "act')
    assert AuditSpool(tmp_path).pending() == [_record(1)]


def test_the_spool_is_only_the_agents_to_read(tmp_path: Path) -> None:
    """The records name owners, workspaces and images: 0600 when written, rewritten,
    and when an older agent had left the file readable by all."""
    spool = AuditSpool(tmp_path)
    spool.add(_record(1))
    assert spool.path.stat().st_mode & 0o777 == 0o600
    spool.acked(spool.take())
    assert spool.path.stat().st_mode & 0o777 == 0o600
    spool.path.chmod(0o644)
    spool.add(_record(2))
    assert spool.path.stat().st_mode & 0o777 == 0o600
    spool.path.chmod(0o644)
    assert AuditSpool(tmp_path).pending() == [_record(2)]  # read back, rewritten
    assert spool.path.stat().st_mode & 0o777 == 0o600
