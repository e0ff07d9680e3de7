"""The daemons' ``text`` log (workspace/log.py): one line per record, whatever the
message carries. Messages say what callers sent (a node's reason for a failure, the node
a request names), and a compromised node's newline forged log lines, its escape
sequences acted on the terminal of an admin reading the log."""

from __future__ import annotations

import logging
import sys
import threading
import warnings

from tests import logstate
from workspace import log


def daemon_formatter() -> logging.Formatter:
    """The formatter ``log.setup`` gives the service's stderr in ``text`` format."""
    with logstate.kept():
        log.setup("INFO", "workspace-service", "text")
        formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    return formatter


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "workspace.ops.reports", logging.WARNING, __file__, 1, msg, args,
        sys.exc_info() if exc else None,
    )  # fmt: skip


def test_a_message_with_a_newline_and_escapes_is_one_line() -> None:
    forged = "2026-12-05 17:00:00,000 workspace-service[1] ERROR workspace.ops.liveness: node n1"
    reason = f"disk full\n{forged}\x1b]52;c;Y3VybCBldmls\x07\r"
    rec = record("workspace %s failed on node %s: %s", "w1", "n2", reason)
    line = daemon_formatter().format(rec)
    assert "\n" not in line and "\r" not in line
    assert "\x1b" not in line and "\x07" not in line
    assert line.endswith(
        f"WARNING workspace.ops.reports: workspace w1 failed on node n2: disk full\\x0a{forged}"
        "\\x1b]52;c;Y3VybCBldmls\\x07\\x0d"
    )


def test_a_traceback_still_follows_on_its_own_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("%s failed unexpectedly (incident %s)", "ListNodes", "abc", exc=True)
    lines = daemon_formatter().format(rec).splitlines()
    assert lines[0].endswith("ListNodes failed unexpectedly (incident abc)")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_what_log_setup_changes_is_undone_for_the_tests_after() -> None:
    """tests/conftest.py undoes around each test what ``log.setup`` (a daemon's main() run
    in-process) changes: left, the root logger at INFO made later tests' caplog capture
    other modules' lines, and its handler wrote to a finished test's captured stderr."""
    root, slurm = logging.getLogger(), logging.getLogger("ws-slurm")
    before = (root.level, root.handlers[:], slurm.propagate, slurm.handlers[:])
    hooks = (warnings.showwarning, sys.excepthook, threading.excepthook)
    with logstate.kept():
        log.setup("INFO", "workspace-agent", "json", node="n1")
        slurm.propagate = False
        assert root.level == logging.INFO and root.handlers != before[1]
        assert warnings.showwarning is not hooks[0] and sys.excepthook is not hooks[1]
    assert (root.level, root.handlers, slurm.propagate, slurm.handlers) == before
    assert (warnings.showwarning, sys.excepthook, threading.excepthook) == hooks
    with logstate.kept():  # and it captures warnings again when set up again
        log.setup("INFO", "workspace-agent", "json")
        assert warnings.showwarning is not hooks[0]
