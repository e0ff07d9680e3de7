"""One contract for every hypervisor driver (after Nova's driver-conformance suite).

Run against the FakeDriver and the LibvirtDriver on libvirt's test:// driver; the
real QEMU run lives in tests/host/test_libvirt_driver_real.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from agent.virt.base import DomainInfo, DomainSpec, DomainState, NicSpec
from tests.contract.conftest import DriverHarness
from workspace.errors import DriverError


def make_spec(workspace_id: str = "c-0001", name: str = "contract", **kw: object) -> DomainSpec:
    args: dict[str, object] = {
        "workspace_id": workspace_id,
        "name": name,
        "cpus": 1,
        "memory_mib": 64,
        "kernel": "/nonexistent/vmlinuz",
        "initrd": "/nonexistent/initrd.gz",
        "cmdline": "console=ttyS0",
        "hostname": name,
    }
    args.update(kw)
    return DomainSpec(**args)  # type: ignore[arg-type]


def state(h: DriverHarness, workspace_id: str) -> DomainState | None:
    info = h.driver.get(workspace_id)
    return None if info is None else info.state


def by_id(infos: list[DomainInfo]) -> dict[str, DomainState]:
    return {i.workspace_id: i.state for i in infos}


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_define_lists_shutoff(harness: DriverHarness) -> None:
    d = harness.driver
    assert d.list_domains() == []
    assert d.get("c-0001") is None
    d.define(make_spec(console_log=str(harness.tmp / "c.log")))
    assert by_id(d.list_domains()) == {"c-0001": DomainState.SHUTOFF}
    info = d.get("c-0001")
    assert info is not None
    assert info.workspace_id == "c-0001" and info.state is DomainState.SHUTOFF


def test_define_is_idempotent(harness: DriverHarness) -> None:
    d = harness.driver
    spec = make_spec()
    d.define(spec)
    d.define(spec)
    d.define(make_spec(memory_mib=128, nics=(NicSpec("52:54:00:00:00:09", "wsbr0"),)))
    assert by_id(d.list_domains()) == {"c-0001": DomainState.SHUTOFF}


def test_lifecycle(harness: DriverHarness) -> None:
    d = harness.driver
    d.define(make_spec())
    d.start("c-0001")
    assert state(harness, "c-0001") is DomainState.RUNNING
    d.suspend("c-0001")
    assert state(harness, "c-0001") is DomainState.PAUSED
    d.resume("c-0001")
    assert state(harness, "c-0001") is DomainState.RUNNING
    # A guest that reboots itself is running again; one that does not is reset.
    if not d.reboot("c-0001", timeout_s=2.0):
        d.reset("c-0001")
    assert state(harness, "c-0001") is DomainState.RUNNING
    d.reset("c-0001")
    assert state(harness, "c-0001") is DomainState.RUNNING
    assert d.shutdown("c-0001", timeout_s=5.0) is True
    assert state(harness, "c-0001") is DomainState.SHUTOFF
    # Shutting down what is already off succeeds at once.
    assert d.shutdown("c-0001", timeout_s=5.0) is True


def test_destroy(harness: DriverHarness) -> None:
    d = harness.driver
    d.define(make_spec())
    d.destroy("c-0001")  # off already: no-op
    assert state(harness, "c-0001") is DomainState.SHUTOFF
    d.start("c-0001")
    d.destroy("c-0001")
    assert state(harness, "c-0001") is DomainState.SHUTOFF
    d.destroy("c-0001")
    assert state(harness, "c-0001") is DomainState.SHUTOFF
    d.start("c-0001")  # stays defined and can start again
    assert state(harness, "c-0001") is DomainState.RUNNING


def test_undefine(harness: DriverHarness) -> None:
    d = harness.driver
    d.define(make_spec("c-0001"))
    d.define(make_spec("c-0002", "other"))
    d.start("c-0002")
    d.undefine("c-0001")
    d.undefine("c-0002")  # running: powered off first
    assert d.list_domains() == []
    assert d.get("c-0001") is None and d.get("c-0002") is None
    d.undefine("c-0001")  # absent: no-op
    d.undefine("never-defined")


def test_errors(harness: DriverHarness) -> None:
    d = harness.driver
    with pytest.raises(DriverError, match="c-0404"):
        d.start("c-0404")
    d.define(make_spec())
    with pytest.raises(DriverError):
        d.reboot("c-0001", timeout_s=1.0)  # not running
    with pytest.raises(DriverError):
        d.reset("c-0001")  # not running
    with pytest.raises(DriverError):
        d.suspend("c-0001")  # not running
    d.start("c-0001")
    with pytest.raises(DriverError, match="c-0001"):
        d.start("c-0001")  # already running
    with pytest.raises(DriverError):
        d.define(make_spec("c-0002", cpus=0))


def test_restart_finds_domains(harness: DriverHarness) -> None:
    d = harness.driver
    d.define(make_spec("c-0001"))
    d.define(make_spec("c-0002", "other"))
    d.start("c-0002")
    before = by_id(d.list_domains())
    d2 = harness.restart()
    after = by_id(d2.list_domains())
    assert set(after) == set(before) == {"c-0001", "c-0002"}
    if harness.kind == "fake":
        assert after == before
    # (libvirt's test:// boots every domain of its node file: only the set is compared.
    # On a real host libvirtd keeps running domains running across agent restarts.)
    d2.destroy("c-0002")
    d2.undefine("c-0002")
    assert set(by_id(d2.list_domains())) == {"c-0001"}


def test_foreign_domains_are_invisible(harness: DriverHarness) -> None:
    d = harness.driver
    d.define(make_spec("c-0001"))
    harness.define_foreign("someone-elses-vm")
    harness.define_foreign("ws-c-0002")  # our naming scheme, but not our metadata
    assert by_id(d.list_domains()) == {"c-0001": DomainState.SHUTOFF}
    assert d.get("c-0002") is None
    with pytest.raises(DriverError, match="does not own"):
        d.define(make_spec("c-0002"))
    with pytest.raises(DriverError):
        d.start("c-0002")
    d.undefine("c-0002")  # not ours: left alone
    d.define(make_spec("c-0003"))
    assert set(by_id(d.list_domains())) == {"c-0001", "c-0003"}


def test_events_fire_on_start(harness: DriverHarness) -> None:
    d = harness.driver
    seen: list[str] = []
    lock = threading.Lock()

    def callback(workspace_id: str) -> None:
        with lock:
            seen.append(workspace_id)

    d.set_event_callback(callback)
    d.define(make_spec())
    wait_for(lambda: "c-0001" in seen, timeout_s=1.0)  # a define event, if any
    with lock:
        seen.clear()
    d.start("c-0001")
    if harness.sync_events:
        assert "c-0001" in seen
    else:
        assert wait_for(lambda: "c-0001" in seen), "no lifecycle event within 5 s of start"
    d.set_event_callback(None)


def test_concurrent_use(harness: DriverHarness) -> None:
    d = harness.driver
    errors: list[BaseException] = []

    def work(i: int) -> None:
        wid = f"c-1{i:03d}"
        try:
            d.define(make_spec(wid, f"par-{i}"))
            d.start(wid)
            d.suspend(wid)
            d.resume(wid)
            d.destroy(wid)
            d.undefine(wid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert d.list_domains() == []


def test_host_capacity(harness: DriverHarness) -> None:
    cpus, memory_mib = harness.driver.host_capacity()
    assert cpus >= 1 and memory_mib >= 64
