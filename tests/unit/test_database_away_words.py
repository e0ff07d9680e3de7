"""What a caller is told while the store's database cannot be reached (store/engines.py
``away``): to try again, and that a retry is not done twice only where that holds -- a
request with a request id (CreateWorkspace, CreateCluster), not a destroy or an agent's
report, which have none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from tests.unit.test_request_validation import Site, build_site
from workspace import callctx
from workspace.domain.states import Op
from workspace.errors import Unavailable
from workspace.node.v1 import nodes_pb2
from workspace.store import engines

SAFE = "a retried request with the same request id is not done twice"


class Refused(Exception):
    """psycopg's error when no server answered: no SQLSTATE."""

    sqlstate = None


def no_server(_session: Any) -> None:
    raise sa_exc.OperationalError("SELECT 1", {}, Refused("connection refused"))


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


def test_a_create_with_a_request_id_is_told_a_retry_is_safe(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "serialize_writes", no_server)
    with (
        callctx.bound(method="CreateWorkspace", request_id="r-1"),
        pytest.raises(Unavailable) as err,
    ):
        site.create(name="a", request_id="r-1")
    assert "try again" in err.value.message
    assert SAFE in err.value.message


def test_writes_without_a_request_id_are_not_promised_that(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = site.create(name="a")
    monkeypatch.setattr(engines, "serialize_writes", no_server)
    calls = [
        # A create sent without an id gets a fresh one each time: a retry makes another.
        ("CreateWorkspace", lambda: site.create(name="b")),
        ("DestroyWorkspace", lambda: site.core.operate("alice", made.id, Op.DESTROY)),
        (
            "ReportStatus",
            lambda: site.nodes.report(nodes_pb2.ReportStatusRequest(node="n1", full=True)),
        ),
    ]
    for method, call in calls:
        with callctx.bound(method=method), pytest.raises(Unavailable) as err:
            call()
        assert "try again" in err.value.message, method
        assert "request id" not in err.value.message, (method, err.value.message)
