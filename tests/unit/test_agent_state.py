"""The agent's per-workspace state (agent.json): changes from several threads at once
(an operation's reboot count, a trust re-check's verdict) all stay."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from agent.disks import WorkspaceFiles


def test_changes_from_two_threads_at_once_both_stay(tmp_path: Path) -> None:
    files = WorkspaceFiles(tmp_path / "ws")
    files.save_state("w1", {"reboot_count": 0, "trust": "allow"})
    n = 300
    start = threading.Barrier(2)

    def reboots() -> None:
        start.wait()
        for i in range(1, n + 1):
            files.update_state("w1", reboot_count=i)

    def verdicts() -> None:
        start.wait()
        for i in range(n):
            files.update_state("w1", trust="warn" if i % 2 else "allow", checked=i)

    threads = [threading.Thread(target=reboots), threading.Thread(target=verdicts)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the threads take turns often, as on a busy node
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert files.load_state("w1") == {"reboot_count": n, "trust": "warn", "checked": n - 1}


def test_an_update_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    files = WorkspaceFiles(tmp_path / "ws")
    files.update_state("w1", trust="allow")
    path = tmp_path / "ws" / "w1" / "agent.json"
    before = path.stat().st_mtime_ns
    path.chmod(0o400)  # a write would replace the file (a new inode, mode 0600)
    inode = path.stat().st_ino
    files.update_state("w1", trust="allow")
    assert path.stat().st_ino == inode and path.stat().st_mtime_ns == before
    assert files.load_state("w1") == {"trust": "allow"}
