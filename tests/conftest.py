"""Fixtures every test directory may use: a real PostgreSQL server (tests/pg.py).

``pg_server``: one server for the whole session, started on first use (about half a
second: initdb, then the server on a unix socket of its own; no TCP), stopped by its pid
at the end. Skipped where PostgreSQL's server is not installed (``make deps`` installs it).
``pg_url``: a database of its own for the requesting test module.
``pg_head``: the name of a database migrated to the newest revision, a template:
``pg_server.database(name, template=pg_head)`` is a store at head in milliseconds.
``_logging_as_it_was`` (autouse): what a test changes of the process's logging is undone
after it, so that no later test on the same xdist worker inherits it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from tests import logstate
from tests.host.lanes import HostLanes
from tests.pg import PgServer, running_server

_names = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--host-lanes",
        action="store_true",
        help="with -n 2: the real-VM modules with cloud-image guests one after another in "
        "one worker, the others beside them (tests/host/lanes.py)",
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> HostLanes | None:
    return HostLanes(config, log) if config.getoption("host_lanes") else None


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """What the test changes of the process's logging set-up undone after it
    (tests/logstate.py): a test that runs a daemon's main() in-process calls
    ``workspace.log.setup``, which leaves the root logger at INFO with a handler writing to
    that test's captured stderr; a later test on the same worker then captured other
    modules' lines with caplog (CI failed so, 20699ff)."""
    with logstate.kept():
        yield


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    yield from running_server()


def db_name(hint: str) -> str:
    """A database name unique in this session, readable in the server's log."""
    slug = re.sub(r"[^a-z0-9_]", "_", hint.lower())[-40:]
    return f"t{next(_names)}_{slug}"


@pytest.fixture(scope="module")
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name = db_name(request.module.__name__.rsplit(".", 1)[-1])
    url = pg_server.database(name)
    try:
        yield url
    finally:
        pg_server.drop(name)


@pytest.fixture
def pg_db(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own for one test (``pg_url``: one per module)."""
    name = db_name(request.node.name)
    url = pg_server.database(name)
    try:
        yield url
    finally:
        pg_server.drop(name)


@pytest.fixture(scope="session")
def pg_head(pg_server: PgServer) -> str:
    from workspace.store import Store

    name = "ws_head"
    Store(pg_server.database(name)).close()
    return name
