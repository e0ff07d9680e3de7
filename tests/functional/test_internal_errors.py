"""An unexpected exception reaches the caller as INTERNAL with the method and an incident
id, never its text; the log has the text under the same incident id."""

from __future__ import annotations

import logging
import re

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
