"""Changing the limits of an existing workspace (agent/reconcile.py ``limit_changes``,
agent/executor.py): level-triggered, recorded by the fake driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.reconcile import limit_changes
from agent.virt.base import DomainState
from tests.unit.test_executor import Parts, _order, observed, wait_for
from workspace.domain.netpolicy import Limits
from workspace.domain.states import Desired, Observed

SLOW = Limits(cpu_percent=25, net_mbps=20)


def test_limit_changes_is_pure() -> None:
    wanted = {"a": SLOW, "b": Limits(), "c": SLOW, "d": SLOW, "e": SLOW}
    have: dict[str, Limits | None] = {"a": Limits(), "b": Limits(), "c": SLOW, "d": None}
    # a differs; b and c agree; d's driver cannot tell; e has no domain yet; planned skip.
    assert limit_changes(wanted, have, set()) == {"a"}
    assert limit_changes(wanted, have, {"a"}) == set()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _running(parts: Parts, limits: Limits) -> None:
    parts.executor.take([_order(limits=limits)])
    parts.executor.reconcile_once()
    wait_for(lambda: parts.executor.observe(["w1"]) == [observed("w1", Observed.RUNNING)])


def test_new_limits_reach_a_running_domain_once(parts: Parts) -> None:
    ex, driver = parts.executor, parts.driver
    _running(parts, SLOW)
    spec = driver.spec_of("w1")
    assert spec is not None and spec.limits == SLOW  # defined with them
    ex.reconcile_once()
    assert driver.limit_changes == []  # as ordered: nothing to do

    faster = Limits(cpu_percent=50)
    ex.take([_order(limits=faster)])  # what `ws update --cpu-percent 50` sends
    ex.reconcile_once()
    wait_for(lambda: driver.limit_changes)
    assert driver.limit_changes == [("w1", faster, DomainState.RUNNING)]
    info = driver.get("w1")
    assert info is not None and info.limits == faster and info.state is DomainState.RUNNING
    ex.reconcile_once()
    ex.reconcile_once()
    assert len(driver.limit_changes) == 1  # level-triggered: applied once, then equal
    assert ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)]


def test_limits_of_a_stopped_domain_change_its_definition(parts: Parts) -> None:
    ex, driver = parts.executor, parts.driver
    _running(parts, Limits())
    ex.take([_order(Desired.STOPPED, stop_timeout_s=1)])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.STOPPED)])
    ex.take([_order(Desired.STOPPED, stop_timeout_s=1, limits=SLOW)])
    ex.reconcile_once()
    wait_for(lambda: driver.limit_changes)
    assert driver.limit_changes == [("w1", SLOW, DomainState.SHUTOFF)]
    spec = driver.spec_of("w1")
    assert spec is not None and spec.limits == SLOW


def test_removing_limits_is_a_change_too(parts: Parts) -> None:
    _running(parts, SLOW)
    parts.executor.take([_order()])
    parts.executor.reconcile_once()
    wait_for(lambda: parts.driver.limit_changes)
    assert parts.driver.limit_changes == [("w1", Limits(), DomainState.RUNNING)]
