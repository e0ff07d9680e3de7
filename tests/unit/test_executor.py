"""The executor on its own (agent/executor.py): orders in, fake domains and reports out,
with no service — staging fetches from an in-memory source."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent import executor as executor_mod
from agent.audit import AuditSpool
from agent.backoff import Backoff
from agent.cache import BlobCache, Source
from agent.disks import WorkspaceFiles
from agent.executor import Executor
from agent.gate import TrustGate
from agent.netsetup import NullNetworking
from agent.staging import Staging
from agent.status import Sight
from agent.virt.base import DomainState
from agent.virt.fake import FakeDriver
from images import signing
from images.digest import of_bytes
from images.model import Mode, Partition
from workspace.config import FakeDriverConfig
from workspace.domain.model import Disk, Nic, NodeCondition, Observation, Order
from workspace.domain.states import Desired, Observed
from workspace.errors import ConfigError, DriverError

BLOB = bytes(range(256)) * 16
DIGEST = of_bytes(BLOB)


def wait_for(pred: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.02)
    raise AssertionError("timed out")


class Parts:
    def __init__(self, tmp: Path, fake: FakeDriverConfig | None = None) -> None:
        self.reports: list[list[str]] = []
        self.fetched = 0
        self.cache = BlobCache(tmp / "cache")
        self.audit = AuditSpool(tmp)
        self.gate = TrustGate("n1", self.audit)
        self.driver = FakeDriver(fake or FakeDriverConfig(persist=False))
        self.files = WorkspaceFiles(tmp / "workspaces")
        self.staging = Staging(
            self.cache, self.gate, self._no_peer, Source("service test", self._fetch), 1, _nothing
        )
        self.stop = threading.Event()
        self.executor = Executor(
            self.driver,
            self.files,
            NullNetworking(),
            self.staging,
            self.gate,
            self.reports.append,
            2,
            60.0,
            self.stop,
        )

    def _fetch(self, digest: str, offset: int) -> Iterator[bytes]:
        assert digest == DIGEST
        self.fetched += 1
        yield BLOB[offset:]

    @staticmethod
    def _no_peer(address: str, node: str) -> Source:
        raise AssertionError(f"no peer expected, got {address}")

    def close(self) -> None:
        self.stop.set()
        self.executor.close()
        self.staging.close()


def _nothing() -> None:
    return None


def observed(wid: str, state: Observed, reason: str = "", reboots: int = 0) -> Observation:
    """What the executor reports of ``wid``: every report says the reboots carried out."""
    return Observation(wid, state, reason, applied_reboot_count=reboots)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _order(desired: Desired = Desired.RUNNING, **kw: Any) -> Order:
    root = Partition("root", Mode.COW, DIGEST, len(BLOB), "raw")
    return Order("w1", "one", "one", desired, 1, 512, "img", (Disk(root),), (), **kw)


def test_an_order_becomes_a_running_domain_and_is_reported(parts: Parts) -> None:
    ex = parts.executor
    assert ex.observe() == []  # no orders yet: nothing is done or reported
    ex.reconcile_once()
    assert parts.driver.list_domains() == []

    ex.take([_order()])
    assert ex.observe(["w1"]) == [observed("w1", Observed.PROPAGATING)]
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    assert ["w1"] in parts.reports
    assert parts.cache.has(DIGEST) and parts.cache.pin_owners() == {"w1"}
    assert (parts.files.dir("w1") / "root.qcow2").exists()
    assert ex.seen("w1") is None  # the pass that created it saw no domain yet
    ex.reconcile_once()
    assert ex.seen("w1") is DomainState.RUNNING
    assert parts.audit.pending() == []  # no policy held: nothing checked, nothing audited


def test_orders_that_stop_then_drop_a_workspace(parts: Parts) -> None:
    ex = parts.executor
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])

    ex.take([_order(Desired.STOPPED, stop_timeout_s=1)])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.STOPPED)])

    ex.take([])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.ABSENT)])
    assert parts.driver.get("w1") is None
    assert not parts.files.dir("w1").exists()
    assert parts.cache.pin_owners() == set()
    assert parts.fetched == 1


def test_a_refused_order_fails_before_anything_is_fetched(parts: Parts) -> None:
    ex = parts.executor
    assert parts.gate.update(signing.Policy(version=2, enforce=True), False)
    ex.take([_order(verified_digests=(DIGEST,))])
    ex.reconcile_once()
    (got,) = wait_for(lambda: [o for o in ex.observe(["w1"]) if o.state is Observed.FAILED] or None)
    assert got.reason == (
        "create failed: image img refused on this node: image img is not signed (not tried "
        "again until the trust policy changes)"
    )
    assert parts.fetched == 0 and parts.driver.list_domains() == []
    (record,) = parts.audit.pending()
    assert (record.action, record.verdict, record.workspace_id) == ("boot", "deny", "w1")


def test_a_boot_the_policy_refused_is_not_retried_until_the_policy_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same policy gives the same verdict: no retry loop writing a deny to the audit
    on every try; a new policy version (or a new ask) is tried at once."""
    monkeypatch.setattr(executor_mod, "OP_RETRY", Backoff(0.0, 0.0))  # no backoff to hide it
    parts = Parts(tmp_path)
    try:
        ex = parts.executor
        parts.gate.update(signing.Policy(version=2, enforce=True), False)
        ex.take([_order(verified_digests=(DIGEST,))])
        for _ in range(6):
            ex.reconcile_once()
            time.sleep(0.1)
        assert [r.verdict for r in parts.audit.pending()] == ["deny"]
        assert ex.observe(["w1"])[0].state is Observed.FAILED
        parts.gate.update(signing.Policy(version=3, enforce=True), False)
        ex.reconcile_once()
        wait_for(lambda: len(parts.audit.pending()) == 2)
        ex.take([_order(Desired.PAUSED, verified_digests=(DIGEST,))])  # asked anew
        ex.reconcile_once()
        wait_for(lambda: len(parts.audit.pending()) == 3)
        time.sleep(0.2)
        ex.reconcile_once()
        time.sleep(0.2)
        assert len(parts.audit.pending()) == 3
    finally:
        parts.close()


class _OneNetworkDown(NullNetworking):
    """Networking whose network "lab" cannot be made ready (e.g. its uplink is missing)."""

    def __init__(self) -> None:
        self.down = True

    def sync(self, orders: Any) -> dict[str, str]:
        return {"lab": "uplink eth9 does not exist on node n1"} if self.down else {}


def test_a_network_that_is_not_ready_holds_only_its_workspaces(parts: Parts) -> None:
    net = _OneNetworkDown()
    parts.executor.net = net
    ex = parts.executor
    lab = Nic("lab", "10.0.0.5", "52:54:00:00:00:05", 24, "10.0.0.1", "wsbr-lab", "10.0.0.0/24")
    held = replace(_order(), workspace_id="w2", name="two", hostname="two", nics=(lab,))
    ex.take([_order(), held])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    (seen,) = ex.observe(["w2"])
    assert seen.state is Observed.FAILED
    assert seen.reason == "network lab: uplink eth9 does not exist on node n1"
    assert parts.driver.get("w2") is None  # nothing made for it
    net.down = False  # the admin fixes the uplink: the next pass creates it
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w2"]) == [observed("w2", Observed.RUNNING)])


class _NotIsolated(NullNetworking):
    """A node without br_netfilter: the policy of workspace w2 cannot hold there."""

    def __init__(self) -> None:
        self.why = {"w2": "not isolated: its connectivity policy cannot be enforced on node n1"}

    def holds(self) -> dict[str, str]:
        return dict(self.why)


def test_a_workspace_that_cannot_be_isolated_is_held_and_says_why(parts: Parts) -> None:
    net = _NotIsolated()
    parts.executor.net = net
    ex = parts.executor
    restricted = replace(_order(), workspace_id="w2", name="two", hostname="two")
    ex.take([_order(), restricted])
    ex.reconcile_once()
    # the open one starts; the restricted one is not made, and says why
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    (seen,) = ex.observe(["w2"])
    assert (seen.state, seen.reason) == (Observed.FAILED, net.why["w2"])
    assert parts.driver.get("w2") is None
    assert ["w2"] in parts.reports
    net.why = {}  # br_netfilter loaded: the next pass creates it
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w2"]) == [observed("w2", Observed.RUNNING)])
    # the module goes away under the running VM: it stays up and says so
    net.why = {"w2": "not isolated: gone"}
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w2"]) == [observed("w2", Observed.RUNNING, "not isolated: gone")])
    net.why = {}
    ex.reconcile_once()
    assert ex.observe(["w2"]) == [observed("w2", Observed.RUNNING)]


def test_every_pass_has_the_driver_check_the_host_and_goes_on_when_it_cannot(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def resync_host() -> None:
        calls.append(1)
        raise DriverError("nft: shaping ['wsta'] failed: no such file")

    parts.driver.resync_host = resync_host  # type: ignore[method-assign]
    ex = parts.executor
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    ex.reconcile_once()
    assert len(calls) == 2
    assert "network limits could not be checked or restored: nft: shaping" in caplog.text


def test_a_reboot_is_reported_carried_out_once_the_driver_did_it(parts: Parts) -> None:
    ex, driver = parts.executor, parts.driver
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])

    held, entered = threading.Event(), threading.Event()
    reboot = driver.reboot

    def slow_reboot(wid: str, timeout_s: float) -> bool:
        entered.set()
        assert held.wait(10)
        return reboot(wid, timeout_s)

    driver.reboot = slow_reboot  # type: ignore[method-assign]
    ex.take([_order(reboot_count=1)])  # `ws reboot`
    parts.reports.clear()
    ex.reconcile_once()
    assert entered.wait(10)
    assert ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)]  # under way: not yet
    held.set()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=1)])
    wait_for(lambda: ["w1"] in parts.reports)  # said at once, not at the next heartbeat
    ex.reconcile_once()
    assert ex.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=1)]  # once

    # An agent restarted on the same state directory says the same before any pass.
    again = Executor(
        driver, parts.files, NullNetworking(), parts.staging, parts.gate, _ignore, 1, 60.0,
        parts.stop,
    )  # fmt: skip
    try:
        assert again.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=1)]
    finally:
        again.close()


def test_a_guest_that_ignores_the_reboot_is_reset_after_its_stop_timeout(tmp_path: Path) -> None:
    """``ws reboot`` asks the guest first (its services stop, its disks are synced);
    only a guest that does not reboot within the stop timeout is reset."""
    parts = Parts(tmp_path, FakeDriverConfig(persist=False, ignore_shutdown=["one"]))
    try:
        ex = parts.executor
        ex.take([_order(stop_timeout_s=1)])
        ex.reconcile_once()
        wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
        ex.take([_order(stop_timeout_s=1, reboot_count=1)])
        ex.reconcile_once()
        wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=1)])
        assert "fake: reset" in parts.files.console_log("w1").read_text()
        assert "fake: reboot" not in parts.files.console_log("w1").read_text()
    finally:
        parts.close()


def test_a_clean_reboot_is_not_a_reset(parts: Parts) -> None:
    ex = parts.executor
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    ex.take([_order(reboot_count=1)])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=1)])
    assert "fake: reboot" in parts.files.console_log("w1").read_text()
    assert "fake: reset" not in parts.files.console_log("w1").read_text()


@pytest.mark.parametrize("then", ["ws stop --force", "ws destroy"])
def test_a_forced_stop_ends_a_stop_that_still_waits_for_the_guest(parts: Parts, then: str) -> None:
    """`ws stop --force` (or `ws destroy`) while an earlier stop waits (10 minutes here)
    for a guest that ignores it: the domain is powered off now, not when that wait ends."""
    ex, driver = parts.executor, parts.driver
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    entered = threading.Event()

    def ignored_shutdown(wid: str, timeout_s: float) -> bool:
        # As libvirt's: the guest ignores the button; the wait ends when it is off.
        entered.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = driver.get(wid)
            if info is None or info.state is DomainState.SHUTOFF:
                return True
            time.sleep(0.02)
        return False

    driver.shutdown = ignored_shutdown  # type: ignore[method-assign]
    ex.take([_order(Desired.STOPPED, stop_timeout_s=600)])
    ex.reconcile_once()
    assert entered.wait(10)
    ex.reconcile_once()  # a pass while it waits: no second stop, nothing forced
    assert driver.get("w1").state is DomainState.RUNNING  # type: ignore[union-attr]
    console = parts.files.console_log("w1")
    if then == "ws destroy":  # the order goes: the domain and its files are removed
        ex.take([])
        ex.reconcile_once()
        assert "power off (forced)" in wait_for(lambda: console.exists() and console.read_text())
        # The wait ended, and with it the stop: the next pass removes it.
        gone = [observed("w1", Observed.ABSENT)]
        wait_for(lambda: ex.reconcile_once() or ex.observe(["w1"]) == gone)
        assert parts.driver.get("w1") is None
        return
    ex.take([_order(Desired.STOPPED, stop_timeout_s=600, force_stop=True)])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.STOPPED)])
    assert "power off (forced)" in console.read_text()


def test_a_create_carries_out_the_reboots_asked_before_it(parts: Parts) -> None:
    """A domain made anew (say, after it disappeared) boots fresh: no reboot follows."""
    ex, driver = parts.executor, parts.driver
    reboots: list[str] = []
    driver.reboot = reboots.append  # type: ignore[method-assign]
    ex.take([_order(reboot_count=3)])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=3)])
    ex.reconcile_once()
    assert reboots == []


def _ignore(ids: list[str]) -> None:
    return None


def test_a_start_carries_out_the_reboots_asked_while_it_was_off(parts: Parts) -> None:
    """The VM powered itself off before a pending reboot was acted on: the agent starts
    it (it should run), and that fresh boot is the reboot; none follows."""
    ex, driver = parts.executor, parts.driver
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    reboots: list[str] = []
    driver.reboot = reboots.append  # type: ignore[method-assign]
    assert driver.shutdown("w1", 1)  # `poweroff` inside the guest
    ex.take([_order(reboot_count=1)])  # `ws reboot`, asked while it ran
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING, reboots=1)])
    ex.reconcile_once()  # the next pass has nothing to do
    assert reboots == []


def test_a_repair_is_noted_once_it_worked(parts: Parts) -> None:
    """A domain shut off behind the agent's back is started again; until the start has
    worked, reports show it as it is (shut off, then starting), not "started again"."""
    ex, driver, gate = parts.executor, parts.driver, parts.gate
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    ex.reconcile_once()  # the pass that sees it running
    held, entered = threading.Event(), threading.Event()
    check = gate.check

    def slow_check(order: Order, what: str) -> Any:
        entered.set()  # the start's first step: its trust check
        assert held.wait(10)
        return check(order, what)

    gate.check = slow_check  # type: ignore[method-assign]
    driver.destroy("w1")  # as `virsh destroy` would
    ex.reconcile_once()
    assert entered.wait(10)
    assert ex.observe(["w1"]) == [observed("w1", Observed.STOPPED)]  # no note yet
    held.set()
    (after,) = wait_for(lambda: (o := ex.observe(["w1"]))[0].state is Observed.RUNNING and o)
    assert after.reason.startswith("domain was found shut off at ")
    assert after.reason.endswith("(not by us); started again")


class _Conditions(NullNetworking):
    """Networking whose passes find what ``found`` says."""

    def __init__(self) -> None:
        self.found: tuple[NodeCondition, ...] = ()

    def conditions(self) -> tuple[NodeCondition, ...]:
        return self.found


def test_the_nodes_conditions_are_those_of_the_last_pass_and_a_change_is_sent_soon(
    parts: Parts,
) -> None:
    net, soon = _Conditions(), []
    parts.executor.net = net
    parts.executor.conditions_changed = lambda: soon.append(1)
    ex = parts.executor
    assert ex.conditions() is None  # not checked yet: a report says nothing of them
    ex.reconcile_once()
    assert ex.conditions() is None  # no orders yet: no pass
    ex.take([])
    ex.reconcile_once()
    assert ex.conditions() == () and len(soon) == 1  # checked: none
    cond = NodeCondition("no-isolation", "bridged IPv4 does not pass the inet hooks")
    net.found = (cond,)
    ex.reconcile_once()
    assert ex.conditions() == (cond,) and len(soon) == 2
    ex.reconcile_once()
    assert len(soon) == 2  # nothing new: nothing sent early
    net.found = ()
    ex.reconcile_once()
    assert ex.conditions() == () and len(soon) == 3


def test_a_hypervisor_that_does_not_answer_is_a_condition_and_nothing_is_judged(
    parts: Parts,
) -> None:
    """libvirtd down: no pass fails, nothing is done, no workspace is said gone or
    stopped (the ones the node may have are unknown), and the node has a condition
    until the hypervisor answers again; then the passes carry on where they were."""
    ex = parts.executor
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    ex.reconcile_once()
    assert ex.conditions() == ()

    parts.driver.unreachable = "Failed to connect socket to '/run/libvirt/libvirt-sock'"
    ex.take([])  # destroyed meanwhile: its removal must wait, not be reported done
    ex.reconcile_once()
    (cond,) = ex.conditions() or ()
    assert cond.code == "hypervisor-unreachable" and cond.subject == ""
    assert parts.driver.unreachable in cond.message
    assert ex.sight() == Sight([], ("w1",))  # a full report still names it
    assert ex.sight(["w1"]) == Sight([], ("w1",))
    assert ex.observe(["w1"]) == []

    parts.driver.unreachable = ""
    ex.reconcile_once()
    assert ex.conditions() == ()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.ABSENT)])
    assert parts.driver.list_domains() == []


def test_a_fake_guest_that_ignores_the_button_is_waited_for_up_to_ignored_wait_s(
    tmp_path: Path,
) -> None:
    """The fake driver stands in for the wait of a stop (its timeout, or a preemption's
    grace) with at most ``fake.ignored_wait_s``: short for tests, as long as a site asks."""
    for cap, timeout_s, least in [(0.3, 30, 0.3), (60.0, 0.4, 0.4)]:
        cfg = FakeDriverConfig(persist=False, ignore_shutdown=["one"], ignored_wait_s=cap)
        driver = FakeDriver(cfg, tmp_path / f"s{cap}")
        t0 = time.monotonic()
        assert driver.wait_ignored(timeout_s) is False  # not powered off: forced next
        assert least <= time.monotonic() - t0 < 10
    with pytest.raises(ConfigError, match=r"fake\.ignored_wait_s: must be 0 or more"):
        FakeDriverConfig(ignored_wait_s=-1)


def _resumes(driver: FakeDriver) -> list[str]:
    """The resumes the executor asks of ``driver`` from now on."""
    calls: list[str] = []
    resume = driver.resume

    def counted(workspace_id: str) -> None:
        calls.append(workspace_id)
        resume(workspace_id)

    driver.resume = counted  # type: ignore[method-assign]
    return calls


def _paused_by_a_full_disk(parts: Parts) -> list[str]:
    ex = parts.executor
    ex.take([_order()])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    resumes = _resumes(parts.driver)
    parts.driver.fail_writes("w1")  # QEMU pauses it: the node's disk is full
    return resumes


def test_a_guest_paused_by_a_full_disk_is_not_resumed_in_a_loop_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each resume only pauses it again while the disk is full: resumed with a backoff,
    not at every pass (a pass follows each operation at once), and the workspace says
    why it is paused."""
    monkeypatch.setattr(executor_mod, "OP_RETRY", Backoff(60.0, 60.0))
    parts = Parts(tmp_path)
    try:
        ex = parts.executor
        resumes = _paused_by_a_full_disk(parts)
        for _ in range(5):
            ex.reconcile_once()
            wait_for(ex.idle)
        assert resumes == ["w1"]
        (seen,) = ex.observe(["w1"])
        assert seen.state is Observed.PAUSED
        assert "a write to its disk failed" in seen.reason
        assert "full" in seen.reason
    finally:
        parts.close()


def test_a_guest_paused_by_a_full_disk_runs_again_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_mod, "OP_RETRY", Backoff(0.0, 0.0))
    parts = Parts(tmp_path)
    try:
        ex = parts.executor
        _paused_by_a_full_disk(parts)
        ex.reconcile_once()
        wait_for(ex.idle)
        assert ex.observe(["w1"])[0].state is Observed.PAUSED
        parts.driver.fail_writes("w1", False)  # room again
        ex.reconcile_once()
        wait_for(ex.idle)
        ex.reconcile_once()  # the pass that sees it running again
        assert ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)]
    finally:
        parts.close()


def test_a_domain_that_disappeared_is_recreated_on_the_disks_it_had(parts: Parts) -> None:
    """`virsh undefine` behind the agent's back: the workspace is made again, and what
    its owner wrote to its disks is still there (it was on fresh, empty disks)."""
    ex, driver = parts.executor, parts.driver
    data = Partition("data", Mode.BLANK, "", 1 << 20, "qcow2")
    order = replace(_order(), disks=(*_order().disks, Disk(data)))
    ex.take([order])
    ex.reconcile_once()
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    ex.reconcile_once()  # the pass that sees it running
    disks = [parts.files.dir("w1") / n for n in ("root.qcow2", "data.qcow2")]
    for disk in disks:  # the owner writes to each disk
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", str(disk)],
            check=True,
            capture_output=True,
        )
    driver.destroy("w1")
    driver.undefine("w1")
    ex.reconcile_once()
    (after,) = wait_for(lambda: (o := ex.observe(["w1"]))[0].state is Observed.RUNNING and o)
    assert after.reason.endswith("(not by us); recreated")
    for disk in disks:
        read = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 4k", str(disk)],
            capture_output=True,
            text=True,
        )
        assert "Pattern verification failed" not in read.stdout, (disk, read.stdout)
        assert read.returncode == 0, read.stderr


class _Taps(NullNetworking):
    """Records which workspaces each pass asks to have their taps put back."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def reattach(self, running: Any) -> None:
        self.asked.append(sorted(o.workspace_id for o in running))


def test_each_pass_puts_back_the_taps_of_the_running_workspaces_only(parts: Parts) -> None:
    """A bridge deleted and made again lost its VMs' taps: each pass has them put back,
    for the workspaces whose domain runs and that no operation is busy with (a start
    attaches its own taps); a stopped one has none."""
    net = _Taps()
    parts.executor.net = net
    ex = parts.executor
    nic = Nic("lab", "10.0.0.5", "52:54:00:00:00:05", 24, "10.0.0.1", "wsbr-lab", "10.0.0.0/24")
    up = replace(_order(), nics=(nic,))
    down = replace(_order(Desired.STOPPED), workspace_id="w2", name="two", hostname="two")
    down = replace(down, nics=(replace(nic, ip="10.0.0.6", mac="52:54:00:00:00:06"),))
    ex.take([up, down])
    ex.reconcile_once()
    assert net.asked == [[]]  # no domain yet
    wait_for(lambda: ex.observe(["w1"]) == [observed("w1", Observed.RUNNING)])
    wait_for(lambda: ex.observe(["w2"]) == [observed("w2", Observed.STOPPED)])
    ex.reconcile_once()
    assert net.asked[-1] == ["w1"]


def test_a_hypervisor_event_while_the_agent_stops_is_dropped_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt's event thread can call in after ``close`` shut the pool (a guest powering
    off as the agent stops): nothing to report to, and no exception on that thread."""
    callbacks: list[Callable[[str], None]] = []
    monkeypatch.setattr(FakeDriver, "set_event_callback", lambda _self, cb: callbacks.append(cb))
    p = Parts(tmp_path)
    p.executor.close()
    (callback,) = callbacks
    callback("w-late")  # raised RuntimeError("cannot schedule new futures after shutdown")
    assert p.reports == []
