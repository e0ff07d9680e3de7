"""The executor when something fails and then stops mattering or comes back: a failure
no longer asked, failed creates dropped, the node's networking failing, a new trust
policy arriving while the hypervisor does not answer (agent/executor.py)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent import executor as executor_mod
from agent.backoff import Backoff
from agent.net import node
from agent.net.dhcp import DhcpHost
from agent.netsetup import NullNetworking
from agent.virt.base import DomainState
from images import signing
from images.model import Mode, Partition
from tests.unit.test_executor import DIGEST, Parts, observed, wait_for
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Disk, Nic, NodeCondition, Observation, Order
from workspace.domain.states import Desired, Observed
from workspace.errors import DriverError, FailedPrecondition, Unavailable

LAB = Nic("lab", "10.0.0.5", "52:54:00:00:00:05", 24, "10.0.0.1", "wsbr-lab", "10.0.0.0/24")


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Parts]:
    # A failed operation waits a minute before it is tried again: long enough that a
    # test sees whether its backoff was forgotten.
    monkeypatch.setattr(executor_mod, "OP_RETRY", Backoff(60.0, 60.0))
    p = Parts(tmp_path)
    try:
        yield p
    finally:
        p.close()


def order(
    wid: str = "w1", desired: Desired = Desired.RUNNING, nics: tuple[Nic, ...] = (), **kw: Any
) -> Order:
    root = Partition("root", Mode.COW, DIGEST, 4096, "raw")
    return Order(wid, wid, wid, desired, 1, 512, "img", (Disk(root),), nics, **kw)


def settle(parts: Parts) -> None:
    """One pass, and the operations it started done."""
    parts.executor.reconcile_once()
    wait_for(parts.executor.idle)


def state(parts: Parts, wid: str = "w1") -> Observation:
    (seen,) = parts.executor.observe([wid])
    return seen


# -- a failure that is no longer asked -------------------------------------------------


def test_a_failed_start_the_owner_then_stops_shows_stopped_not_failed(parts: Parts) -> None:
    ex, driver = parts.executor, parts.driver
    ex.take([order(desired=Desired.STOPPED, stop_timeout_s=1)])
    settle(parts)
    assert state(parts) == observed("w1", Observed.STOPPED)

    start = driver.start

    def failing_start(wid: str) -> None:
        raise DriverError("cannot start: no memory on the host")

    driver.start = failing_start  # type: ignore[method-assign]
    ex.take([order(stop_timeout_s=1)])  # `ws start`
    settle(parts)
    assert state(parts) == observed(
        "w1", Observed.FAILED, "start failed: cannot start: no memory on the host"
    )
    driver.start = start  # type: ignore[method-assign]
    ex.take([order(desired=Desired.STOPPED, stop_timeout_s=1)])  # `ws stop`
    settle(parts)
    assert state(parts) == observed("w1", Observed.STOPPED)  # as it is, not FAILED
    assert ["w1"] in parts.reports  # said at once
    # and the start's backoff is gone: `ws start` now starts it at the next pass
    ex.take([order(stop_timeout_s=1)])
    settle(parts)
    assert state(parts) == observed("w1", Observed.RUNNING)


class _Down(NullNetworking):
    def __init__(self) -> None:
        self.down: dict[str, str] = {}

    def sync(self, orders: Any) -> dict[str, str]:
        return dict(self.down)


def test_a_start_held_by_its_network_then_stopped_shows_stopped(parts: Parts) -> None:
    net, ex = _Down(), parts.executor
    ex.net = net
    ex.take([order(desired=Desired.STOPPED, nics=(LAB,))])
    settle(parts)
    net.down = {"lab": "uplink eth9 does not exist on node n1"}
    ex.take([order(nics=(LAB,))])
    settle(parts)
    assert state(parts) == observed(
        "w1", Observed.FAILED, "network lab: uplink eth9 does not exist on node n1"
    )
    ex.take([order(desired=Desired.STOPPED, nics=(LAB,))])
    settle(parts)
    assert state(parts) == observed("w1", Observed.STOPPED)


# -- creates that failed, then dropped --------------------------------------------------


def test_failed_creates_that_are_dropped_are_reported_gone_once_then_forgotten(
    parts: Parts,
) -> None:
    ex = parts.executor
    said: list[Observation] = []
    ex.report = lambda ids: said.extend(ex.observe(ids))  # what the link would send

    def no_blob(o: Order) -> Any:
        raise Unavailable("image: cannot fetch blob")

    parts.staging.ensure = no_blob  # type: ignore[method-assign]
    for i in range(20):
        ex.take([order(f"w{i:02d}")])
        settle(parts)
        assert state(parts, f"w{i:02d}").state is Observed.FAILED
        ex.take([])  # `ws destroy`
        settle(parts)
        wait_for(lambda i=i: observed(f"w{i:02d}", Observed.ABSENT) in said)
    settle(parts)
    assert ex.observe() == []  # a full report names none of them any more
    assert ex.sight().unknown == ()


# -- the node's networking failing ------------------------------------------------------


class _FilterFails(NullNetworking):
    def __init__(self) -> None:
        self.fails = True

    def sync(self, orders: Any) -> dict[str, str]:
        if self.fails:
            raise FailedPrecondition("nft: Could not process rule: No such file or directory")
        return {}

    def conditions(self) -> tuple[NodeCondition, ...]:
        if not self.fails:
            return ()
        return (NodeCondition("network-not-ready", "network lab: filter rules …", "lab"),)


def test_a_filter_that_cannot_be_applied_holds_only_workspaces_with_a_nic(parts: Parts) -> None:
    ex, driver, net = parts.executor, parts.driver, _FilterFails()
    ex.take([order("old")])
    settle(parts)
    assert driver.get("old") is not None
    ex.net = net
    ex.take([order("plain"), order("lab", nics=(LAB,))])  # `old` destroyed
    settle(parts)
    assert driver.get("old") is None  # removed all the same
    assert state(parts, "plain") == observed("plain", Observed.RUNNING)  # no NIC: runs
    assert state(parts, "lab") == observed(
        "lab",
        Observed.FAILED,
        "network lab: nft: Could not process rule: No such file or directory",
    )
    assert driver.get("lab") is None
    assert ex.conditions() == net.conditions()  # the node says why
    net.fails = False
    ex.take([order("plain"), order("lab", nics=(LAB,))])
    settle(parts)
    assert ex.conditions() == ()
    wait_for(lambda: state(parts, "lab") == observed("lab", Observed.RUNNING))


class _Dnsmasq:
    """A bridge's DHCP server; the ones on ``failing`` bridges exit at start."""

    failing: set[str] = set()

    def __init__(self, bridge: str, state_dir: Path, subnet: str, **kw: Any) -> None:
        self.bridge = bridge

    def set_options(self, router: str | None, dns_servers: tuple[str, ...]) -> bool:
        return False

    def set_hosts(self, entries: Iterable[DhcpHost]) -> bool:
        return False

    def ensure_running(self) -> int:
        if self.bridge in self.failing:
            raise Unavailable(
                f"dnsmasq for bridge {self.bridge} exited at start (status 2):\n"
                f"--- Mon Jan  1 00:00:00 2024: dnsmasq --interface={self.bridge}\n"
                "dnsmasq: failed to create listening socket for port 67: Address in use\n"
            )
        return 1


def test_a_dhcp_server_that_will_not_start_holds_only_its_network(
    parts: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node goes on with every other workspace (a destroyed one is removed) and says
    which network is not ready, and why; fixed, the held workspace starts."""
    monkeypatch.setattr(node, "ensure_bridge", lambda *a, **k: None)
    monkeypatch.setattr(node, "apply_ruleset", lambda *a, **k: None)
    monkeypatch.setattr(node, "list_table", lambda *a, **k: "as applied")
    monkeypatch.setattr(node, "bridged_ipv4_filtered", lambda *a, **k: True)
    monkeypatch.setattr(node, "DhcpServer", _Dnsmasq)
    monkeypatch.setattr(_Dnsmasq, "failing", {"wsbr-lab"})
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path / "agent"), networks=[
        NodeNetworkConfig(name="lab"), NodeNetworkConfig(name="web"),
    ])  # fmt: skip
    ex, driver = parts.executor, parts.driver
    ex.net = node.BridgeNetworking(cfg)
    web = replace(LAB, network="web", bridge="wsbr-web", mac="52:54:00:00:00:06", ip="10.0.0.6")
    ex.take([order("old")])
    settle(parts)
    ex.take([order("a", nics=(LAB,)), order("b", nics=(web,))])  # `old` destroyed
    settle(parts)
    assert driver.get("old") is None
    why = (
        "network lab: DHCP server: dnsmasq for bridge wsbr-lab exited at start (status 2):"
        " dnsmasq: failed to create listening socket for port 67: Address in use"
    )
    assert state(parts, "a") == observed("a", Observed.FAILED, why)
    assert state(parts, "b") == observed("b", Observed.RUNNING)
    assert ex.conditions() == (NodeCondition("network-not-ready", why, subject="lab"),)
    monkeypatch.setattr(_Dnsmasq, "failing", set())
    settle(parts)
    assert ex.conditions() == ()
    wait_for(lambda: state(parts, "a") == observed("a", Observed.RUNNING))


# -- a new trust policy while the hypervisor does not answer ----------------------------


def _revoke(parts: Parts) -> None:
    """A policy under which the workspaces' image is not trusted, and the site stops
    running VMs on revocation; the agent re-checks what runs."""
    assert parts.gate.update(signing.Policy(version=2, enforce=True), True)
    parts.executor.recheck_running()


def test_a_revocation_during_a_hypervisor_outage_powers_off_once_it_answers(
    parts: Parts,
) -> None:
    ex, driver = parts.executor, parts.driver
    said: list[Observation] = []
    ex.report = lambda ids: said.extend(ex.observe(ids))  # what the link would send
    wanted = [order("w1", verified_digests=(DIGEST,)), order("w2", verified_digests=(DIGEST,))]
    ex.take(wanted)
    settle(parts)
    driver.unreachable = "cannot connect to qemu:///system (libvirtd restarting)"
    _revoke(parts)
    settle(parts)
    wait_for(ex.idle)
    driver.unreachable = ""
    running = [DomainState.RUNNING, DomainState.RUNNING]
    assert [d.state for d in driver.list_domains()] == running  # not checked yet
    destroy, tries = driver.destroy, []

    def destroy_fails_once(wid: str) -> None:
        tries.append(wid)
        if wid == "w1" and tries.count("w1") == 1:
            raise DriverError("virDomainDestroy: Timed out during operation")
        destroy(wid)

    driver.destroy = destroy_fails_once  # type: ignore[method-assign]
    settle(parts)  # w1 fails; w2 is checked all the same
    wait_for(lambda: driver.get("w2").state is DomainState.SHUTOFF)  # type: ignore[union-attr]
    wait_for(ex.idle)
    settle(parts)  # the next pass tries w1 again
    wait_for(lambda: driver.get("w1").state is DomainState.SHUTOFF)  # type: ignore[union-attr]
    assert tries.count("w1") == 2
    note = (
        "image img is no longer trusted under policy version 2 (image img is not signed);"
        " powered off (the site stops VMs on revocation)"
    )
    assert observed("w1", Observed.STOPPED, note) in said  # said on the workspace
    audited = [(r.workspace_id, r.action, r.verdict) for r in parts.audit.pending()]
    assert ("w2", "running", "deny") in audited and ("w1", "running", "deny") in audited
    wait_for(ex.idle)
    settle(parts)
    assert tries.count("w1") == 2  # done: not checked again under the same policy


def test_a_workspace_re_checked_is_busy_and_its_removal_waits(parts: Parts) -> None:
    """`ws destroy` while its VM is checked against a new policy: the removal waits for
    the check, which does not leave the workspace's directory behind."""
    ex, gate = parts.executor, parts.gate
    ex.take([order(verified_digests=(DIGEST,))])
    settle(parts)
    entered, held = threading.Event(), threading.Event()
    verdict = gate.verdict

    def slow_verdict(o: Order) -> Any:
        entered.set()
        assert held.wait(10)
        return verdict(o)

    gate.verdict = slow_verdict  # type: ignore[method-assign]
    assert gate.update(signing.Policy(version=2, enforce=False), False)  # only warns
    ex.recheck_running()
    assert entered.wait(10)
    ex.take([])
    ex.reconcile_once()
    assert parts.driver.get("w1") is not None  # not removed under the check
    held.set()
    wait_for(ex.idle)
    settle(parts)
    assert parts.driver.get("w1") is None
    assert not parts.files.dir("w1").exists()
    assert state(parts) == observed("w1", Observed.ABSENT)


# -- a removal that keeps failing --------------------------------------------------------


def test_a_removal_that_keeps_failing_waits_its_backoff_but_not_another_ops(
    parts: Parts,
) -> None:
    """A removal goes at once, even while a failed operation of the workspace waits its
    backoff; a removal that failed waits its own, as any operation (a pass follows each
    operation at once: a QEMU the kernel cannot kill was destroyed, reported STOPPING and
    logged in a loop as fast as the node could go, each line saying "retry in 60 s")."""
    ex, driver = parts.executor, parts.driver
    ex.take([order()])
    settle(parts)
    assert state(parts).state is Observed.RUNNING
    start = driver.start

    def failing_start(wid: str) -> None:
        raise DriverError("cannot start: no memory on the host")

    driver.destroy("w1")  # behind the agent's back; the start that repairs it fails
    driver.start = failing_start  # type: ignore[method-assign]
    settle(parts)
    assert state(parts).state is Observed.FAILED
    driver.start = start  # type: ignore[method-assign]

    removals: list[str] = []

    def failing_undefine(wid: str) -> None:
        removals.append(wid)
        raise DriverError("Failed to terminate process 4242 with SIGKILL: Device or resource busy")

    driver.undefine = failing_undefine  # type: ignore[method-assign]
    ex.take([])  # `ws destroy`: at once, not after the start's backoff
    settle(parts)
    assert removals == ["w1"]
    for _ in range(4):
        settle(parts)
    assert removals == ["w1"]  # its own backoff (a minute here) holds the next try
    assert state(parts).reason.startswith("remove failed: Failed to terminate process 4242")


def test_lost_found_of_a_filesystem_mounted_for_the_disks_is_no_workspace(
    parts: Parts,
) -> None:
    """A site that mounts a volume at <state_dir>/workspaces has its lost+found there:
    it is not a workspace left over, so it is neither removed nor reported."""
    lost = parts.files.root / "lost+found"
    lost.mkdir()
    (lost / "#1234").write_bytes(b"what fsck found")
    parts.executor.take([order()])
    for _ in range(3):
        settle(parts)
    assert (lost / "#1234").exists()
    assert [o.workspace_id for o in parts.executor.observe()] == ["w1"]
    assert not any("lost+found" in ids for ids in parts.reports)


def test_files_that_cannot_be_removed_fail_the_removal_and_say_why(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workspace directory that cannot be deleted (its filesystem went read-only after
    disk errors) is a removal that failed, tried again after its backoff; it was taken as
    done, reported ABSENT, found again by the next pass and removed again, at every pass."""
    ex, driver = parts.executor, parts.driver
    ex.take([order()])
    settle(parts)
    undefined: list[str] = []
    undefine = driver.undefine

    def counted(wid: str) -> None:
        undefined.append(wid)
        undefine(wid)

    rmdir, unlink = os.rmdir, os.unlink
    mine = str(parts.files.root)

    def read_only(real: Any) -> Any:
        def call(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> None:
            where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else str(path)
            if where.startswith(mine):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            real(path, *args, dir_fd=dir_fd, **kwargs)

        return call

    driver.undefine = counted  # type: ignore[method-assign]
    monkeypatch.setattr(os, "rmdir", read_only(rmdir))
    monkeypatch.setattr(os, "unlink", read_only(unlink))
    ex.take([])  # `ws destroy`
    for _ in range(4):
        settle(parts)
    assert undefined == ["w1"]
    assert parts.files.dir("w1").exists()
    seen = state(parts)
    assert seen.state is Observed.FAILED
    assert "Read-only file system" in seen.reason


# -- a create that waited for a worker ----------------------------------------------------


def test_a_create_destroyed_while_it_waits_for_a_worker_is_never_made(parts: Parts) -> None:
    """A node asked for more creates than it runs at once (a cluster) queues the rest;
    one destroyed meanwhile is left out of the node's full reports (nothing of it
    exists), so the service gives its address back. It used to be made all the same
    once a worker was free: a VM with an address the pool could hand out again."""
    ex, driver = parts.executor, parts.driver
    gate = threading.Event()
    define = driver.define
    defined: list[str] = []

    def slow_define(spec: Any) -> None:
        defined.append(spec.workspace_id)
        if spec.workspace_id in ("w1", "w2"):
            gate.wait(10)
        define(spec)

    driver.define = slow_define  # type: ignore[method-assign]
    ex.take([order("w1"), order("w2"), order("w3")])
    ex.reconcile_once()  # two workers, both busy: w3 waits for one
    wait_for(lambda: sorted(defined) == ["w1", "w2"])
    ex.take([order("w1"), order("w2")])  # `ws destroy w3`
    assert "w3" not in {o.workspace_id for o in ex.observe()}  # the service lets it go
    gate.set()
    wait_for(ex.idle)
    settle(parts)
    assert "w3" not in defined
    assert sorted(d.workspace_id for d in driver.list_domains()) == ["w1", "w2"]
    assert "w3" not in parts.files.existing()


def test_a_failed_operation_is_logged_with_the_workspace_name(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    """The operation's line and its failure's name the workspace as `ws list` does, not
    only by its id: an admin looks for `alpha` in the node's log."""
    driver = parts.driver

    def failing_start(wid: str) -> None:
        raise DriverError("cannot start: no memory on the host")

    driver.start = failing_start  # type: ignore[method-assign]
    parts.executor.take([replace(order(), name="alpha")])
    with caplog.at_level("INFO", logger="agent"):
        settle(parts)
    lines = [r.getMessage() for r in caplog.records]
    assert "workspace w1 (alpha): create" in lines, lines
    assert any(m.startswith("workspace w1 (alpha): create failed (attempt 1") for m in lines)
