# ruff: noqa: F811 - the fixtures imported from test_store_engines are parameters here
"""Statements prepared once (store/prepared.py) do what ``Connection.execute`` does, on
both engines: the same rows, values through their types' bind processors (JSON,
booleans, floats), SQLAlchemy's errors for a broken constraint, several rows in one
call, and a statement that cannot be prepared (an expanding IN list, a JSON result
column) still answered, through ``Connection.execute``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from tests.contract.test_store_engines import MakeUrl, make_url  # noqa: F401 - fixtures
from workspace.store import Store
from workspace.store.models import Network, Project
from workspace.store.prepared import Prepared

_NETWORKS = cast(Table, Network.__table__)
_PROJECTS = cast(Table, Project.__table__)

ADD_NETWORK = Prepared(insert(_NETWORKS))
BY_GATEWAY = Prepared(
    select(_NETWORKS.c.name, _NETWORKS.c.vlan)
    .where(_NETWORKS.c.gateway == bindparam("gw"), _NETWORKS.c.vlan != 7)
    .order_by(_NETWORKS.c.name)
)
SET_VLAN = Prepared(
    update(_NETWORKS).where(_NETWORKS.c.name == bindparam("n")).values(vlan=bindparam("v"))
)
# Not preparable: an IN list bound at execution, and a JSON column read back.
NAMED = Prepared(
    select(_NETWORKS.c.name).where(_NETWORKS.c.name.in_(bindparam("names", expanding=True)))
)
DNS_OF = Prepared(select(_NETWORKS.c.dns).where(_NETWORKS.c.name == bindparam("n")))


def network(name: str, gateway: str = "10.0.0.1", vlan: int = 0) -> dict[str, object]:
    return {
        "name": name,
        "subnet": "10.0.0.0/24",
        "gateway": gateway,
        "range_start": "10.0.0.10",
        "range_end": "10.0.0.200",
        "bridge": f"br-{name}",
        "mac_prefix": "52:54:00",
        "dns": ["10.0.0.1", "10.0.0.2"],
        "vlan": vlan,
    }


@pytest.fixture
def store(make_url: MakeUrl) -> Iterator[Store]:
    s = Store(make_url())
    try:
        yield s
    finally:
        s.close()


def test_rows_written_and_read_are_those_the_orm_sees(store: Store) -> None:
    with store.write() as s:
        assert ADD_NETWORK.write(s.connection(), network("a")) == 1
        assert ADD_NETWORK.write(s.connection(), [network("b"), network("c", vlan=7)]) == 2
        assert SET_VLAN.write(s.connection(), {"n": "b", "v": 12}) == 1
        assert SET_VLAN.write(s.connection(), {"n": "nothing", "v": 12}) == 0
        # Read in the same transaction: the writes above are its own.
        assert BY_GATEWAY.rows(s.connection(), {"gw": "10.0.0.1"}) == [("a", 0), ("b", 12)]
        assert BY_GATEWAY.first(s.connection(), {"gw": "10.9.9.9"}) is None
        assert BY_GATEWAY.scalar(s.connection(), {"gw": "10.0.0.1"}) == "a"
    with store.read() as s:
        got = {n.name: n for n in s.execute(select(Network)).scalars()}
    assert sorted(got) == ["a", "b", "c"]
    assert got["a"].dns == ["10.0.0.1", "10.0.0.2"]  # JSON, as the ORM writes it
    assert (got["b"].vlan, got["c"].vlan) == (12, 7)


def test_values_go_through_their_types(store: Store) -> None:
    """A JSON column and a float, written prepared, read back as the ORM wrote them; the
    columns an INSERT leaves out take their defaults."""
    add = Prepared(insert(_PROJECTS))
    with store.write() as s:
        add.write(
            s.connection(),
            {"name": "physics", "default_limits": {"cpu_percent": 50}, "created_at": 12.5},
        )
    with store.read() as s:
        row = s.get(Project, "physics")
        assert row is not None
        assert row.default_limits == {"cpu_percent": 50}
        assert row.created_at == 12.5
        assert (row.quota_instances, row.lease_action) == (0, "STOP")  # defaults


def test_a_broken_constraint_is_sqlalchemys_error_and_the_transaction_keeps_nothing(
    store: Store,
) -> None:
    with store.write() as s:
        ADD_NETWORK.write(s.connection(), network("a"))
    with pytest.raises(IntegrityError), store.write() as s:
        ADD_NETWORK.write(s.connection(), network("b"))
        ADD_NETWORK.write(s.connection(), network("a"))  # taken
    with store.read() as s:
        assert BY_GATEWAY.rows(s.connection(), {"gw": "10.0.0.1"}) == [("a", 0)]


def test_a_missing_parameter_is_named(store: Store) -> None:
    with store.write() as s, pytest.raises(KeyError, match="gw"):
        BY_GATEWAY.rows(s.connection(), {})


def test_statements_that_cannot_be_prepared_still_answer(store: Store) -> None:
    with store.write() as s:
        ADD_NETWORK.write(s.connection(), [network("a"), network("b"), network("c")])
        assert NAMED.rows(s.connection(), {"names": ["a", "c", "x"]}) == [("a",), ("c",)]
        assert DNS_OF.scalar(s.connection(), {"n": "b"}) == ["10.0.0.1", "10.0.0.2"]
