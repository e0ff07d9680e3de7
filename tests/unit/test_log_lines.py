"""The daemons' ``text`` log (workspace/log.py): one line per record, whatever the
message carries. Messages say what callers sent (a node's reason for a failure, the node
a request names), and a compromised node's newline forged log lines, its escape
sequences acted on the terminal of an admin reading the log."""

from __future__ import annotations

import logging
import sys

from workspace import log


def daemon_formatter() -> logging.Formatter:
    """The formatter ``log.setup`` gives the service's stderr in ``text`` format."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        log.setup("INFO", "workspace-service", "text")
        formatter = root.handlers[0].formatter
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
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
