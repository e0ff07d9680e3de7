"""How the edge ends a failed call (workspace/edge/calls.py): its status, and its log."""

from __future__ import annotations

import logging

import grpc
import pytest

from workspace.edge import calls
from workspace.errors import (
    DATABASE_AWAY,
    AccessDenied,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)


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


def edge_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The edge's own lines: a thread another test left running on this worker (a
    service's loop still stopping) may log beside them."""
    return [r for r in caplog.records if r.name.startswith("workspace.edge")]


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
    lines = [r.getMessage() for r in edge_records(caplog)]
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
    assert len([r for r in edge_records(caplog) if "unexpectedly" in r.getMessage()]) == 2


def test_the_database_away_is_left_to_the_stores_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the service's database was away each method refused wrote an ERROR every
    10 s (an agent's Register and ReportStatus, each client call) for as long as the
    outage lasted, beside the store's own "cannot be reached" and "answers again"."""
    away = f"{DATABASE_AWAY} right now; try again"
    caplog.set_level(logging.INFO, logger="workspace.edge")
    for method in ("Register", "ReportStatus", "ListWorkspaces"):
        assert end(Unavailable(away), method) == (grpc.StatusCode.UNAVAILABLE, away)
    assert edge_records(caplog) == []


def test_callers_refused_for_who_they_are_are_logged_with_their_peer(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked certificate, a user calling the nodes' API, a node acting for another:
    an admin's look at the site's edges; a user's refusal on their own objects is not."""
    monkeypatch.setattr(Context, "peer", lambda self: "ipv4:127.0.0.1:5555", raising=False)
    caplog.set_level(logging.INFO, logger="workspace.edge")
    revoked = "the certificate of user:dave has been revoked"
    for _ in range(3):
        assert end(Unauthenticated(revoked), "ListWorkspaces") == (
            grpc.StatusCode.UNAUTHENTICATED,
            revoked,
        )
    other = "this certificate is node n2's; it cannot act for node 'local'"
    assert end(AccessDenied(other), "ReportStatus") == (grpc.StatusCode.PERMISSION_DENIED, other)
    mine = "only alice (the owner) and admins may save workspace w"
    assert end(PermissionDenied(mine), "SaveImage") is not None
    assert [r.getMessage() for r in edge_records(caplog)] == [
        f"refused ListWorkspaces from ipv4:127.0.0.1:5555: {revoked}",
        f"refused ReportStatus from ipv4:127.0.0.1:5555: {other}",
    ]
