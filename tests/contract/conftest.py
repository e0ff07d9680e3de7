"""Driver harnesses for the driver contract suite: the fake, and libvirt's test:// driver.

The libvirt harness opens ``test:///<abs path>`` on a private node XML file, never
``test:///default`` (whose state is shared by the whole process). Each test://
connection has its own state, so "restarting the agent" is simulated by writing
the persistent definitions into a new node file and opening a new driver on it
(libvirt keeps persistent definitions as XML files on disk in the same way).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.virt.base import Driver
from agent.virt.fake import FakeDriver
from workspace.config import FakeDriverConfig, LibvirtConfig

# A host with no domains. The test driver fills in defaults for everything else.
_NODE_XML = """<node>
  <cpu>
    <mhz>2000</mhz>
    <model>x86_64</model>
    <nodes>1</nodes>
    <sockets>1</sockets>
    <cores>4</cores>
    <threads>1</threads>
  </cpu>
  <memory>8388608</memory>
{domains}</node>
"""


class DriverHarness:
    """A driver under test plus what the contract needs around it."""

    kind = ""
    # Whether events fire synchronously inside the call that caused them.
    sync_events = False

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.driver: Driver = self._open()

    def _open(self) -> Driver:
        raise NotImplementedError

    def restart(self) -> Driver:
        """Close the driver and open a new one on the same persisted state."""
        self.driver.close()
        self.driver = self._open()
        return self.driver

    def define_foreign(self, name: str) -> None:
        """Define a domain without our metadata, as a person would by hand."""
        pytest.skip(f"{self.kind}: there are no domains but the driver's own")

    def close(self) -> None:
        self.driver.close()


class FakeHarness(DriverHarness):
    kind = "fake"
    sync_events = True

    def _open(self) -> Driver:
        return FakeDriver(FakeDriverConfig(), str(self.tmp / "state"))


class LibvirtTestHarness(DriverHarness):
    kind = "libvirt-test"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._generation = 0
        self._node_file = self._write_node("")
        super().__init__(tmp)

    def _write_node(self, domains: str) -> Path:
        self._generation += 1
        path = self.tmp / f"node-{self._generation}.xml"
        path.write_text(_NODE_XML.format(domains=domains))
        return path

    def _open(self) -> Driver:
        from agent.virt.libvirt_driver import LibvirtDriver

        cfg = LibvirtConfig(uri=f"test://{self._node_file}", virt_type="qemu")
        return LibvirtDriver(cfg, str(self.tmp / "state"))

    def _conn(self) -> Any:
        from agent.virt.libvirt_driver import LibvirtDriver

        assert isinstance(self.driver, LibvirtDriver)
        return self.driver.connection.get()

    def restart(self) -> Driver:
        import libvirt

        xmls = [
            d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            for d in self._conn().listAllDomains(0)
            if d.isPersistent()
        ]
        self._node_file = self._write_node("".join(xmls))
        return super().restart()

    def define_foreign(self, name: str) -> None:
        self._conn().defineXML(
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
        )


@pytest.fixture(params=[FakeHarness, LibvirtTestHarness], ids=lambda c: c.kind)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DriverHarness]:
    cls: type[DriverHarness] = request.param
    if cls is LibvirtTestHarness:
        pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    h = cls(tmp_path)
    try:
        yield h
    finally:
        h.close()
