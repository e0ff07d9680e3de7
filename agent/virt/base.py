"""The driver interface every hypervisor backend implements.

A driver knows nothing of the service: it turns a DomainSpec into a running domain
and reports what domains *it owns* exist (ownership is recorded in the domain
itself, so a restarted agent finds its domains again). Disks, blobs and networks
are prepared by the agent before ``define`` is called; the driver only attaches
the paths it is given. All methods are blocking; the agent calls them from
worker threads, never from an event loop.
"""

from __future__ import annotations

import enum
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from workspace.domain.model import ExecOutcome
from workspace.domain.netpolicy import Limits
from workspace.errors import FailedPrecondition


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    # Anything transitional (booting, shutting down) or crashed.
    OTHER = "other"


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str  # "raw" | "qcow2" (always explicit, never probed)
    target: str  # "vda", "vdb", ...
    readonly: bool = False
    shareable: bool = False


@dataclass(frozen=True)
class NicSpec:
    mac: str
    bridge: str
    ip: str = ""  # informational (metadata, fake console); DHCP hands it out
    # The host-side tap device (``tap_name``): the node's filter rules name it.
    tap: str = ""


@dataclass(frozen=True)
class DomainSpec:
    workspace_id: str
    name: str  # the workspace's human name (metadata only)
    cpus: int
    memory_mib: int
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    kernel: str = ""  # path; direct kernel boot when set
    initrd: str = ""
    cmdline: str = ""
    console_log: str = ""  # path of the serial console log file
    hostname: str = ""
    # Enforced by the hypervisor: cputune, iotune on every writable disk, a policer on
    # every NIC's tap (0 = not limited).
    limits: Limits = field(default_factory=Limits)

    @property
    def domain_name(self) -> str:
        return domain_name(self.workspace_id)


def domain_name(workspace_id: str) -> str:
    """The hypervisor-side name of a workspace's domain."""
    return f"ws-{workspace_id}"


# What every tap of ours begins with: the node's filter drops what a tap of this name
# sends when no NIC of the orders has it (its workspace left the orders, its domain not
# yet removed).
TAP_PREFIX = "wst"


def tap_name(workspace_id: str, index: int) -> str:
    """The host-side tap device of a workspace's NIC number ``index`` (at most 15
    characters, stable across agent restarts, distinct per workspace and NIC): the
    node's nftables rules match on it (agent/net/filter.py)."""
    digest = hashlib.sha256(workspace_id.encode()).hexdigest()[:10]
    return f"{TAP_PREFIX}{digest}{index:x}"[:15]


# ``DomainInfo.reason`` of a domain the hypervisor paused because a write to one of its
# disks failed: QEMU's default for a disk (werror=enospc) pauses the guest when the
# node's filesystem is full, and tries the write again when the guest is resumed.
PAUSED_IO_ERROR = "paused:ioerror"


@dataclass(frozen=True)
class DomainInfo:
    workspace_id: str
    state: DomainState
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    # The limits the domain has now (as defined or last set live); None: this driver
    # does not know, and the agent never tries to change them.
    limits: Limits | None = None


# Called (from any thread) with a workspace id when a domain's state changed.
EventCallback = Callable[[str], None]


class ConsoleSession(ABC):
    """An interactive serial console, both ways (``Driver.open_console``). Thread-safe:
    one thread reads while another writes or closes."""

    @abstractmethod
    def read(self, timeout_s: float) -> bytes | None:
        """Console output: bytes; b"" once the console ended (EOF, for good); None when
        nothing came within ``timeout_s``."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Keystrokes to the guest (raises DriverError once the console is gone)."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the console (idempotent); a blocked ``read`` returns b""."""


class Driver(ABC):
    """Lifecycle of the domains this agent owns. Raise DriverError on failure."""

    hypervisor: str = "unknown"

    @abstractmethod
    def list_domains(self) -> list[DomainInfo]:
        """Every domain owned by this agent, defined or running."""

    @abstractmethod
    def get(self, workspace_id: str) -> DomainInfo | None:
        """One owned domain, or None if it does not exist."""

    @abstractmethod
    def define(self, spec: DomainSpec) -> None:
        """Define the domain persistently (not started). Idempotent for the same spec."""

    @abstractmethod
    def start(self, workspace_id: str) -> None:
        """Start a defined, shut-off domain."""

    @abstractmethod
    def shutdown(self, workspace_id: str, timeout_s: float) -> bool:
        """ACPI shutdown (a paused domain is resumed first: it could not take the button);
        wait up to timeout_s. True if it powered off by itself."""

    @abstractmethod
    def destroy(self, workspace_id: str) -> None:
        """Power off at once (the domain stays defined). No error if already off."""

    @abstractmethod
    def reboot(self, workspace_id: str, timeout_s: float) -> bool:
        """Ask a running domain's guest to reboot itself (its services stopped, its disks
        synced); wait up to timeout_s for it to. True if it did, or if the domain stopped
        meanwhile; False if the guest ignored it (``reset`` is then the caller's choice)."""

    @abstractmethod
    def reset(self, workspace_id: str) -> None:
        """Reset a running domain at once (the reset button: nothing is synced)."""

    @abstractmethod
    def suspend(self, workspace_id: str) -> None:
        """Pause a running domain's vCPUs."""

    @abstractmethod
    def resume(self, workspace_id: str) -> None:
        """Resume a paused domain."""

    @abstractmethod
    def undefine(self, workspace_id: str) -> None:
        """Power off if needed and remove the definition. No error if absent.

        Disk files belong to the agent, which removes them itself."""

    def set_size(self, workspace_id: str, cpus: int, memory_mib: int) -> bool:
        """Give a defined, shut-off domain this many vCPUs and this much memory in its
        definition (seen at its next start); True if they changed. Called before every
        start: the service resizes stopped workspaces (ops/resize.py)."""
        raise FailedPrecondition(f"the {self.hypervisor} driver cannot change a domain's size")

    def set_limits(self, workspace_id: str, limits: Limits) -> None:
        """Give a defined domain new limits, now (if it runs) and in its definition;
        afterwards ``get(...).limits == limits``. Only called for drivers whose
        DomainInfo reports limits."""
        raise FailedPrecondition(f"the {self.hypervisor} driver cannot change limits")

    # -- inside the guest (optional: the defaults say this driver cannot) ---------------

    def exec(
        self, workspace_id: str, argv: Sequence[str], stdin: bytes, timeout_s: float
    ) -> ExecOutcome:
        """Run ``argv`` in the guest through its guest agent and wait up to ``timeout_s``.

        Raises FailedPrecondition when the domain is not running or no guest agent
        answers, NotFound when there is no such domain. A command the guest cannot start
        (not found) is an outcome with exit code 127, as a shell would say."""
        raise FailedPrecondition(f"the {self.hypervisor} driver cannot run commands in guests")

    def open_console(self, workspace_id: str) -> ConsoleSession:
        """The domain's serial console, both ways (FailedPrecondition when not running).
        The read-only console log keeps being written alongside."""
        raise FailedPrecondition(f"the {self.hypervisor} driver has no interactive consoles")

    def set_event_callback(self, callback: EventCallback | None) -> None:  # noqa: B027
        """Register a callback for lifecycle events (optional speed-up)."""

    def resync_host(self) -> None:  # noqa: B027
        """Check what the driver keeps on the host besides the domains (the network
        limits' policers) and repair what changed behind its back: every reconcile pass.
        Raises DriverError when it could not."""

    def host_capacity(self) -> tuple[int, int]:
        """(cpus, memory_mib) of the host, for registration (DriverError when the
        hypervisor does not answer)."""
        return local_capacity()

    def close(self) -> None:  # noqa: B027
        """Release connections and threads."""


def local_capacity() -> tuple[int, int]:
    """(cpus, memory_mib) of the machine this process runs on, as the kernel says."""
    import os

    cpus = os.cpu_count() or 1
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return cpus, int(line.split()[1]) // 1024
    return cpus, 1024
