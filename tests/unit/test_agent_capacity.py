"""What size a node registers with while its hypervisor does not answer (agent/agent.py):
a node that cannot register sends no heartbeat, and goes DOWN with its VMs running."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.agent import Agent
from agent.virt.base import local_capacity
from agent.virt.fake import FakeDriver
from workspace import config
from workspace.config import AgentConfig
from workspace.errors import DriverError


def test_the_size_the_hypervisor_said_last_then_the_kernels(tmp_path: Path) -> None:
    cfg = config.from_dict(
        AgentConfig,
        {
            "node": "n1",
            "service": "unix:/nonexistent",
            "driver": "fake",
            "state_dir": str(tmp_path / "agent"),
            "insecure": True,
        },
    )
    driver = FakeDriver(cfg.fake, cfg.state_dir)
    driver.unreachable = "Failed to connect socket to '/var/run/libvirt/libvirt-sock'"
    agent = Agent(cfg, driver)
    # libvirtd down when the agent starts: the kernel's word
    assert (agent.node_info().cpus, agent.node_info().memory_mib) == local_capacity()
    driver.unreachable = ""
    driver.host_capacity = lambda: (64, 262144)  # type: ignore[method-assign]
    assert (agent.node_info().cpus, agent.node_info().memory_mib) == (64, 262144)

    def down() -> tuple[int, int]:
        raise DriverError("libvirt: read capacity of host qemu:///system: cannot connect")

    driver.host_capacity = down  # type: ignore[method-assign]
    # down again when the link registers anew (a service restart): what it said last
    assert (agent.node_info().cpus, agent.node_info().memory_mib) == (64, 262144)
    # a config that names both asks nobody
    named = Agent(dataclasses.replace(cfg, cpus=4, memory_mib=8192), driver)
    assert (named.node_info().cpus, named.node_info().memory_mib) == (4, 8192)
