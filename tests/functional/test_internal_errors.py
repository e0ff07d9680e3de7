"""An unexpected exception reaches the caller as INTERNAL with the method and an incident
id, never its text; the log has the text under the same incident id."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.functional.harness import Site
from workspace.ops import queries
from workspace.v1 import workspaces_pb2

SECRET = "no such table: /var/lib/workspace/service/service.db SELECT user_data FROM bob"


def _boom(*_a: object, **_kw: object) -> None:
    raise RuntimeError(SECRET)


@pytest.mark.parametrize("method", ["GetWorkspace", "WatchWorkspaces"])
def test_internal_errors_name_the_method_and_an_incident_not_the_text(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    monkeypatch.setattr(queries, "get", _boom)
    watch = workspaces_pb2.WatchWorkspacesRequest(id="w1")
    with (
        caplog.at_level(logging.ERROR, logger="workspace.edge"),
        pytest.raises(grpc.RpcError) as err,
    ):
        if method == "GetWorkspace":
            site.stubs.get("w1")
        else:
            next(site.stubs.ws.WatchWorkspaces(watch))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details()
    assert SECRET not in details and "RuntimeError" not in details
    found = re.fullmatch(
        rf"internal error in {method} \(incident ([0-9a-f]{{12}})\); "
        r"the service's log has the details",
        details,
    )
    assert found, details
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert len(logged) == 1 and method in logged[0].getMessage()
    assert logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])


def test_a_client_that_ends_a_stream_before_its_first_message_is_no_incident(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """AttachConsole reads its first message from the client; a client that cancels
    before sending one ends the call (gRPC raises in the server's read, or ends the
    stream, depending on timing: five calls, so that the first happens), and the service
    logs no unexpected failure."""
    from tests.functional.harness import wait_for
    from workspace.v1 import access_pb2, access_pb2_grpc

    never = threading.Event()

    def nothing() -> Iterator[access_pb2.ConsoleInput]:
        never.wait(30)
        return
        yield  # a generator that sends nothing

    stub = access_pb2_grpc.GuestsStub(site.stubs.channel)
    with caplog.at_level(logging.INFO, logger="workspace.edge"):
        for _ in range(5):
            call = stub.AttachConsole(nothing())
            time.sleep(0.3)  # the server is waiting for the first message
            call.cancel()
        wait_for(
            lambda: any("client ended the call" in r.getMessage() for r in caplog.records),
            what="the service to see a call end",
        )
        time.sleep(0.5)
    never.set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
