"""How the edge ends a failed call (workspace/edge/calls.py): its status, and its log."""

from __future__ import annotations

import logging

import grpc
import pytest

from workspace.edge import calls
from workspace.errors import NotFound, Unavailable


class Aborted(Exception):
    pass


class Context:
    """The part of a grpc.ServicerContext ``abort`` uses."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise Aborted


def end(exc: Exception, method: str) -> tuple[grpc.StatusCode, str] | None:
    ctx = Context()
    with pytest.raises(Aborted):
        calls.abort(ctx, exc, method)  # type: ignore[arg-type]
    return ctx.status


def test_an_outage_is_logged_once_a_period_per_method_not_once_a_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every call fails the same way while the database is away (agents push console
    output four times a second): each still gets UNAVAILABLE, the log one line."""
    away = "the database cannot be reached right now (test)"
    caplog.set_level(logging.INFO, logger="workspace.edge")
    for _ in range(20):
        assert end(Unavailable(away), "PushConsole") == (grpc.StatusCode.UNAVAILABLE, away)
    assert end(Unavailable(away), "ReportStatus") == (grpc.StatusCode.UNAVAILABLE, away)
    assert end(Unavailable("another reason (test)"), "PushConsole") is not None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"PushConsole failed: {away}",
        f"ReportStatus failed: {away}",
        "PushConsole failed: another reason (test)",
    ]
    # The caller's own mistakes are not logged at all; the unexpected always are.
    assert end(NotFound("no workspace 'x'"), "GetWorkspace") == (
        grpc.StatusCode.NOT_FOUND,
        "no workspace 'x'",
    )
    for _ in range(2):
        code, details = end(RuntimeError("boom"), "GetWorkspace") or (None, "")
        assert code == grpc.StatusCode.INTERNAL and "incident" in details
    assert len([r for r in caplog.records if "unexpectedly" in r.getMessage()]) == 2
