"""Preemption on real VMs: a 1-node libvirt local site filled with preemptible appliance
VMs; one normal create runs, its victim ends TERMINATED with reason PREEMPTED, and the
node's libvirtd never runs more of our domains than fit.

The node announces this host's memory; the VMs are sized from it (a third each, less
the per-VM overhead), so three preemptible ones fill it and a fourth does not fit. A
busybox guest touches a few MiB of its RAM (QEMU allocates lazily), so the host is not
actually loaded. The appliance powers off on the ACPI button (busybox acpid): this is
the graceful path; the forced one (a guest ignoring ACPI) is tested on the fake driver
(tests/functional/test_preempt.py). Boots hold /tmp/ws-realvm.lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from images.appliance import Appliance
from tests.functional.harness import WS, wait_for
from tests.host.realsite import StubsSite, appliance_site
from workspace.config import SchedulerConfig
from workspace.scheduler import Request, memory_claim_mib
from workspace.v1 import admin_pb2, workspaces_pb2

pytestmark = pytest.mark.host
BOOT_S = 240.0


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[StubsSite]:
    with appliance_site("wsp", appliance) as s:
        yield s


class MostRunning:
    """Polls the node's libvirtd for running domains in a thread; keeps the most seen."""

    def __init__(self, site: StubsSite) -> None:
        self.site = site
        self.most = 0
        self.seen: list[list[str]] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop.is_set():
            names = self.site.running()
            if len(names) > self.most:
                self.most = len(names)
                self.seen.append(names)
            self.stop.wait(0.05)

    def close(self) -> int:
        self.stop.set()
        self.t.join()
        return self.most


def test_a_normal_create_preempts_on_a_full_node(site: StubsSite) -> None:
    stubs = site.stubs
    assert stubs is not None
    (node,) = stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    # a third of the node each, overhead included (the service's default scheduler)
    cfg = SchedulerConfig()
    guest = node.memory_mib // 3 - 128
    while memory_claim_mib(cfg, Request(1, guest)) * 3 > node.memory_mib:
        guest -= 16
    assert memory_claim_mib(cfg, Request(1, guest)) * 4 > node.memory_mib

    def create(name: str, preemptible: bool) -> str:
        w = stubs.create(name=name, image="appliance", memory_mib=guest, preemptible=preemptible)
        return str(w.id)

    ps = [create(f"p{i}", True) for i in range(3)]
    for wid in ps:
        stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    assert len(site.running()) == 3
    watch = MostRunning(site)
    try:
        new = create("normal", False)
        shown = stubs.get(new)
        assert shown.state == WS.WORKSPACE_STATE_SCHEDULED
        assert "preempted workspace(s) to stop" in shown.reason
        stubs.wait_state(new, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    finally:
        most = watch.close()
    victims = [stubs.get(w) for w in ps if stubs.get(w).reason.startswith("PREEMPTED")]
    assert len(victims) == 1
    v = wait_for(
        lambda: (g := stubs.get(victims[0].id)).state == WS.WORKSPACE_STATE_TERMINATED and g,
        60,
        "the victim TERMINATED",
    )
    assert v.reason.startswith("PREEMPTED: its capacity was given to") and new in v.reason
    for w in ps:
        if w != victims[0].id:
            assert stubs.get(w).state == WS.WORKSPACE_STATE_RUNNING
    assert most <= 3, f"more domains ran at once than fit: {watch.seen}"
    assert len(site.running()) == 3
    for w in [*ps, new]:
        with contextlib.suppress(Exception):
            stubs.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=w))
    wait_for(lambda: not site.running(), 120, "every domain gone")
