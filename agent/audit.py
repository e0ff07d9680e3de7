"""Trust decisions taken on the node, kept until the service has them.

Each record is appended (and fsynced) to ``<state_dir>/audit.jsonl`` (0600: it names
owners, workspaces and images) before it is
queued for sending; the file is rewritten without the records the service acknowledged
(a ReportStatus that succeeded), and is empty when nothing is outstanding. A restarted
agent reads the file back and sends what it holds, so an entry taken just before a
crash is not lost. Delivery is at least once: a crash after the service stored a report
but before the file was rewritten sends those records again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from workspace.domain.model import AuditRecord
from workspace.files import private_fd, write_private

log = logging.getLogger("agent.audit")

FILE_NAME = "audit.jsonl"


@dataclass(frozen=True)
class Batch:
    """Records taken for one report: acknowledge or give them back by their numbers."""

    numbers: tuple[int, ...]
    records: tuple[AuditRecord, ...]


class AuditSpool:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._lock = threading.Lock()
        self._next = 0
        self._unacked: dict[int, AuditRecord] = {}  # number → record, in order
        self._sending: set[int] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        bad = 0
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                self._unacked[self._next] = AuditRecord(**json.loads(line))
                self._next += 1
            except (ValueError, TypeError):
                bad += 1  # a line cut short by a crash while it was written
        if bad:
            log.warning("dropped %d unreadable line(s) of %s", bad, self.path)
        if self._unacked:
            log.info("%d audit record(s) from before the restart to send", len(self._unacked))
        self._rewrite()

    def add(self, record: AuditRecord) -> None:
        """Spool ``record`` on disk, then queue it for the next report."""
        line = json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n"
        with self._lock:
            with os.fdopen(private_fd(self.path, os.O_WRONLY | os.O_APPEND), "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._unacked[self._next] = record
            self._next += 1

    def take(self) -> Batch:
        """The records not yet sent nor being sent (marked as being sent)."""
        with self._lock:
            numbers = tuple(n for n in self._unacked if n not in self._sending)
            self._sending.update(numbers)
            return Batch(numbers, tuple(self._unacked[n] for n in numbers))

    def acked(self, batch: Batch) -> None:
        """The service has these: forget them, on disk too."""
        if not batch.numbers:
            return
        with self._lock:
            for n in batch.numbers:
                self._unacked.pop(n, None)
                self._sending.discard(n)
            self._rewrite()

    def failed(self, batch: Batch) -> None:
        """Sending failed: the records go with the next report."""
        with self._lock:
            self._sending.difference_update(batch.numbers)

    def pending(self) -> list[AuditRecord]:
        """Every record the service has not acknowledged yet."""
        with self._lock:
            return list(self._unacked.values())

    def _rewrite(self) -> None:
        """The file := the unacknowledged records (called with the lock held)."""
        lines = (
            json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n" for r in self._unacked.values()
        )
        write_private(self.path, "".join(lines), sync=True)
