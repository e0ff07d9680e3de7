"""Hypervisor drivers: a tiny registry next to a complete fake (after Ganeti)."""

from __future__ import annotations

from agent.virt.base import Driver
from workspace.config import AgentConfig
from workspace.errors import ConfigError


def make_driver(cfg: AgentConfig) -> Driver:
    if cfg.driver == "fake":
        from agent.virt.fake import FakeDriver

        return FakeDriver(cfg.fake, cfg.state_dir)
    if cfg.driver == "libvirt":
        from agent.virt.libvirt_driver import LibvirtDriver

        return LibvirtDriver(cfg.libvirt, cfg.state_dir, cfg.exec_max_output_bytes)
    raise ConfigError(f"driver: unknown driver {cfg.driver!r} (choose fake or libvirt)")
