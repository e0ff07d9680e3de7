"""The fake driver's ``boot_delay_s`` (agent/virt/fake.py): a simulated boot takes that
long, and the node's other calls go on meanwhile. It was slept holding the driver's lock:
a node registering again (its capacity) or sending a heartbeat (its domain list) waited
for every boot under way, and with a few creates in a row passed node_grace_s."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.virt import fake
from agent.virt.base import DomainSpec, DomainState
from agent.virt.fake import FakeDriver
from workspace.config import FakeDriverConfig
from workspace.errors import DriverError

DELAY_S = 3.0
BOTH = ["capacity", "domains"]


@pytest.fixture
def driver(tmp_path: Path) -> FakeDriver:
    d = FakeDriver(FakeDriverConfig(persist=False, boot_delay_s=DELAY_S), tmp_path)
    d.define(DomainSpec("w1", "w1", 1, 64, console_log=str(tmp_path / "w1.log")))
    return d


def in_the_delay(monkeypatch: pytest.MonkeyPatch, during: Callable[[], None]) -> None:
    """Run ``during`` in another thread (as the agent's link and executor call the
    driver) where a boot sleeps its delay, waiting for it 10 s at most."""
    real_sleep = fake.time.sleep

    def sleep(seconds: float) -> None:
        if seconds != DELAY_S:
            real_sleep(seconds)
            return
        t = threading.Thread(target=during, daemon=True)
        t.start()
        t.join(10)  # a bound: while the boot held the lock, ``during`` waited for it

    monkeypatch.setattr(fake.time, "sleep", sleep)


def test_a_boot_in_progress_does_not_hold_up_the_nodes_other_calls(
    driver: FakeDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answered: list[str] = []

    def ask() -> None:
        driver.host_capacity()  # what Register sends
        answered.append("capacity")
        driver.list_domains()  # what a heartbeat reports
        answered.append("domains")

    in_the_delay(monkeypatch, ask)
    for boot in (
        lambda: driver.start("w1"),
        lambda: driver.reboot("w1", 10.0),
        lambda: driver.reset("w1"),
    ):
        answered.clear()
        boot()
        assert answered == BOTH
        got = driver.get("w1")
        assert got is not None and got.state is DomainState.RUNNING
    console = (tmp_path / "w1.log").read_text()
    assert "fake: boot 3\n" in console and "fake: reboot\n" in console


def test_a_forced_stop_during_a_reboots_boot_leaves_it_off(
    driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reboot cut short by a forced power-off (`ws stop --force` while the reboot
    runs) leaves the domain off, and the reboot raises nothing."""
    in_the_delay(monkeypatch, lambda: None)
    driver.start("w1")
    in_the_delay(monkeypatch, lambda: driver.destroy("w1"))
    assert driver.reboot("w1", 10.0) is True
    got = driver.get("w1")
    assert got is not None and got.state is DomainState.SHUTOFF


def test_a_start_of_a_domain_that_runs_is_still_refused(
    driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_delay(monkeypatch, lambda: None)
    driver.start("w1")
    with pytest.raises(DriverError, match="not shut off"):
        driver.start("w1")
