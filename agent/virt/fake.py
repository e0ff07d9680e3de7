"""A complete fake hypervisor: deterministic, in memory, optionally persisted.

It behaves like a real node for everything the control plane cares about:
domains are defined, started, shut down (or ignore the request), paused,
rebooted and undefined; a console log is written with the same READY line the
test appliance prints. With ``persist`` its domains survive an agent restart
(as libvirt's do). Failures are injected by workspace name from config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.virt.base import (
    PAUSED_IO_ERROR,
    ConsoleSession,
    DiskSpec,
    DomainInfo,
    DomainSpec,
    DomainState,
    Driver,
    EventCallback,
    NicSpec,
)
from agent.virt.fake_guest import FakeConsole
from agent.virt.fake_guest import run as run_in_guest
from agent.virt.guest_agent import no_guest_agent
from workspace.config import FakeDriverConfig
from workspace.domain.model import ExecOutcome
from workspace.domain.netpolicy import Limits
from workspace.errors import DriverError, FailedPrecondition, NotFound
from workspace.files import private_fd, write_private

# How often a wait for a guest that ignores the button looks whether it was powered off.
_IGNORED_POLL_S = 0.05


@dataclasses.dataclass
class _Domain:
    spec: DomainSpec
    state: DomainState = DomainState.SHUTOFF
    boots: int = 0
    # time.monotonic() of its last boot (0: before this driver: booted long ago).
    booted_at: float = 0.0
    # The guest's files written through exec (``cat > PATH``); kept in memory only.
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    # Paused by the "hypervisor" after a failed disk write (``fail_writes``).
    io_paused: bool = False


def _spec_from_json(d: dict[str, object]) -> DomainSpec:
    disks = tuple(DiskSpec(**x) for x in d.pop("disks", []))  # type: ignore[attr-defined]
    nics = tuple(NicSpec(**x) for x in d.pop("nics", []))  # type: ignore[attr-defined]
    limits = Limits(**d.pop("limits", {}))  # type: ignore[arg-type]
    return DomainSpec(disks=disks, nics=nics, limits=limits, **d)  # type: ignore[arg-type]


class FakeDriver(Driver):
    hypervisor = "fake"

    def __init__(self, cfg: FakeDriverConfig, state_dir: str | os.PathLike[str] = "") -> None:
        self._cfg = cfg
        self._lock = threading.RLock()
        self._domains: dict[str, _Domain] = {}
        self._callback: EventCallback | None = None
        self._consoles: dict[str, list[FakeConsole]] = {}
        self._path = Path(state_dir) / "fake-domains.json" if state_dir and cfg.persist else None
        # Every live limit change: (workspace id, new limits, domain state then) (tests).
        self.limit_changes: list[tuple[str, Limits, DomainState]] = []
        # Set (to an error message): the hypervisor does not answer, as a dead libvirtd
        # would not; every call raises DriverError with it (tests).
        self.unreachable = ""
        # Workspaces whose disk writes fail (the node's disk is full; ``fail_writes``).
        self.full: set[str] = set()
        self._load()

    # -- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        raw = json.loads(self._path.read_text())
        for wid, d in raw.items():
            self._domains[wid] = _Domain(
                spec=_spec_from_json(d["spec"]), state=DomainState(d["state"]), boots=d["boots"]
            )

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            wid: {"spec": dataclasses.asdict(d.spec), "state": d.state.value, "boots": d.boots}
            for wid, d in self._domains.items()
        }
        # It names workspaces, disks and addresses: its owner's alone, whatever the umask.
        write_private(self._path, json.dumps(data), sync=True)

    @contextlib.contextmanager
    def _up(self) -> Iterator[None]:
        """The driver's lock, if the hypervisor answers (else DriverError)."""
        if self.unreachable:
            raise DriverError(f"fake: cannot connect to the hypervisor: {self.unreachable}")
        with self._lock:
            yield

    def _changed(self, workspace_id: str) -> None:
        dom = self._domains.get(workspace_id)
        if dom is None or dom.state is DomainState.SHUTOFF:
            for console in list(self._consoles.get(workspace_id, ())):
                console.close()  # the guest is gone: its consoles end
        self._save()
        cb = self._callback
        if cb is not None:
            # Like libvirt's event loop: callbacks run on another thread, never under our lock.
            threading.Thread(target=cb, args=(workspace_id,), daemon=True).start()

    def _get(self, workspace_id: str) -> _Domain:
        dom = self._domains.get(workspace_id)
        if dom is None:
            raise DriverError(f"fake: no domain for workspace {workspace_id}")
        return dom

    def _console(self, dom: _Domain, text: str) -> None:
        if dom.spec.console_log:
            path = Path(dom.spec.console_log)
            path.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(private_fd(path, os.O_WRONLY | os.O_APPEND), "a") as f:
                f.write(text)

    def _boot_delay(self) -> None:
        """A boot's ``boot_delay_s``, slept without the driver's lock: the node's other
        calls (its Register's capacity, a heartbeat's domain list, other workspaces'
        operations) go on meanwhile, as they do while libvirt boots a guest."""
        if self._cfg.boot_delay_s:
            time.sleep(self._cfg.boot_delay_s)

    def _boot(self, dom: _Domain) -> None:
        dom.state, dom.io_paused = DomainState.RUNNING, False
        dom.boots += 1
        dom.booted_at = time.monotonic()
        ip = dom.spec.nics[0].ip if dom.spec.nics else ""
        host = dom.spec.hostname or dom.spec.name
        self._console(dom, f"fake: boot {dom.boots}\nWORKSPACE-READY ip={ip} hostname={host}\n")

    # -- Driver ------------------------------------------------------------------------

    def set_event_callback(self, callback: EventCallback | None) -> None:
        self._callback = callback

    @staticmethod
    def _info(workspace_id: str, d: _Domain) -> DomainInfo:
        reason = PAUSED_IO_ERROR if d.io_paused and d.state is DomainState.PAUSED else ""
        return DomainInfo(workspace_id, d.state, reason, limits=d.spec.limits)

    def host_capacity(self) -> tuple[int, int]:
        with self._up():  # libvirt's getInfo: not without libvirtd
            return super().host_capacity()

    def list_domains(self) -> list[DomainInfo]:
        with self._up():
            return [self._info(wid, d) for wid, d in self._domains.items()]

    def get(self, workspace_id: str) -> DomainInfo | None:
        with self._up():
            d = self._domains.get(workspace_id)
            return None if d is None else self._info(workspace_id, d)

    def fail_writes(self, workspace_id: str, failing: bool = True) -> None:
        """Tests: the guest's disk writes fail as on a full node (``failing``), or succeed
        again. Like QEMU's default (werror=enospc), a running guest is paused then, and
        a resume while they fail pauses it again at once (the write is tried again)."""
        with self._up():
            if not failing:
                self.full.discard(workspace_id)
                return
            self.full.add(workspace_id)
            dom = self._get(workspace_id)
            if dom.state is DomainState.RUNNING:
                dom.state, dom.io_paused = DomainState.PAUSED, True
                self._changed(workspace_id)

    def define(self, spec: DomainSpec) -> None:
        if any(fnmatch.fnmatchcase(spec.name, pat) for pat in self._cfg.fail_create):
            raise DriverError(f"fake: injected failure defining {spec.name}")
        if spec.cpus < 1 or spec.memory_mib < 1:
            raise DriverError(f"fake: invalid size for {spec.name}")
        with self._up():
            existing = self._domains.get(spec.workspace_id)
            if existing is not None:
                existing.spec = spec
            else:
                self._domains[spec.workspace_id] = _Domain(spec=spec)
            self._changed(spec.workspace_id)

    def _shut_off(self, workspace_id: str) -> _Domain:
        dom = self._get(workspace_id)
        if dom.state is not DomainState.SHUTOFF:
            raise DriverError(f"fake: domain {workspace_id} is {dom.state.value}, not shut off")
        return dom

    def start(self, workspace_id: str) -> None:
        with self._up():
            self._shut_off(workspace_id)
        self._boot_delay()
        with self._up():  # checked again: it may have been started or undefined meanwhile
            self._boot(self._shut_off(workspace_id))
            self._changed(workspace_id)

    def _ignores_the_button(self, dom: _Domain) -> bool:
        """A guest named in ``ignore_shutdown`` ignores the ACPI button (stop and reboot)."""
        return any(fnmatch.fnmatchcase(dom.spec.name, p) for p in self._cfg.ignore_shutdown)

    def wait_ignored(self, timeout_s: float, workspace_id: str = "") -> bool:
        """A guest that ignores the button: the wait for it, at most ``ignored_wait_s``
        (tests keep it short; a site that wants to watch a grace period lengthens it).
        True, as libvirt's wait says, once ``workspace_id``'s domain is off meanwhile (a
        forced stop pulled the plug), which ends the wait; else False at its end."""
        deadline = time.monotonic() + min(timeout_s, self._cfg.ignored_wait_s)
        while True:
            if workspace_id:
                with self._lock:
                    dom = self._domains.get(workspace_id)
                    if dom is None or dom.state is DomainState.SHUTOFF:
                        return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(_IGNORED_POLL_S, remaining))

    def shutdown(self, workspace_id: str, timeout_s: float) -> bool:
        with self._up():
            dom = self._get(workspace_id)
            if dom.state is DomainState.SHUTOFF:
                return True
            if dom.state is DomainState.PAUSED:  # resumed to take the button (as libvirt's)
                dom.io_paused = workspace_id in self.full
                if dom.io_paused:  # its failed write is tried again: paused again
                    raise DriverError(f"fake: cannot shut down {workspace_id}: paused")
                dom.state = DomainState.RUNNING
            ignore = self._ignores_the_button(dom)
            if not ignore:
                dom.state = DomainState.SHUTOFF
                self._console(dom, "fake: power off (ACPI)\n")
                self._changed(workspace_id)
        return self.wait_ignored(timeout_s, workspace_id) if ignore else True

    def destroy(self, workspace_id: str) -> None:
        with self._up():
            dom = self._get(workspace_id)
            if dom.state is not DomainState.SHUTOFF:
                dom.state = DomainState.SHUTOFF
                self._console(dom, "fake: power off (forced)\n")
                self._changed(workspace_id)

    def _to_act_on(self, workspace_id: str, verb: str) -> _Domain:
        """The running domain ``verb`` acts on (DriverError if it is not running)."""
        dom = self._get(workspace_id)
        if dom.state is not DomainState.RUNNING:
            raise DriverError(f"fake: cannot {verb} {workspace_id}: {dom.state.value}")
        return dom

    def _boot_again(self, workspace_id: str, verb: str) -> None:
        """Reboot (or reset) a running domain: it says so on its console, then boots
        after the boot delay (slept without the lock), unless it was powered off
        meanwhile (a forced stop cutting a reboot short)."""
        with self._up():
            self._console(self._to_act_on(workspace_id, verb), f"fake: {verb}\n")
        self._boot_delay()
        with self._up():
            dom = self._get(workspace_id)
            if dom.state is DomainState.RUNNING:
                self._boot(dom)
                self._changed(workspace_id)

    def reboot(self, workspace_id: str, timeout_s: float) -> bool:
        with self._up():
            ignore = self._ignores_the_button(self._to_act_on(workspace_id, "reboot"))
        if ignore:
            return self.wait_ignored(timeout_s, workspace_id)
        self._boot_again(workspace_id, "reboot")
        return True

    def reset(self, workspace_id: str) -> None:
        self._boot_again(workspace_id, "reset")

    def suspend(self, workspace_id: str) -> None:
        with self._up():
            dom = self._to_act_on(workspace_id, "pause")
            dom.state, dom.io_paused = DomainState.PAUSED, False
            self._changed(workspace_id)

    def resume(self, workspace_id: str) -> None:
        with self._up():
            dom = self._get(workspace_id)
            if dom.state is not DomainState.PAUSED:
                raise DriverError(f"fake: cannot resume {workspace_id}: {dom.state.value}")
            # Its failed write is tried again: paused again while the disk is full.
            dom.io_paused = workspace_id in self.full
            dom.state = DomainState.PAUSED if dom.io_paused else DomainState.RUNNING
            self._changed(workspace_id)

    def set_size(self, workspace_id: str, cpus: int, memory_mib: int) -> bool:
        with self._up():
            dom = self._get(workspace_id)
            if dom.state is not DomainState.SHUTOFF:
                raise DriverError(f"fake: domain {workspace_id} is {dom.state.value}, not shut off")
            if (dom.spec.cpus, dom.spec.memory_mib) == (cpus, memory_mib):
                return False
            dom.spec = dataclasses.replace(dom.spec, cpus=cpus, memory_mib=memory_mib)
            self._save()
            return True

    def set_limits(self, workspace_id: str, limits: Limits) -> None:
        with self._up():
            dom = self._get(workspace_id)
            dom.spec = dataclasses.replace(dom.spec, limits=limits)
            self.limit_changes.append((workspace_id, limits, dom.state))
            self._save()

    def undefine(self, workspace_id: str) -> None:
        with self._up():
            if self._domains.pop(workspace_id, None) is not None:
                self._changed(workspace_id)

    # -- inside the guest --------------------------------------------------------------

    def _running(self, workspace_id: str) -> _Domain:
        dom = self._domains.get(workspace_id)
        if dom is None:
            raise NotFound(f"fake: no domain for workspace {workspace_id} on this node")
        if dom.state is not DomainState.RUNNING:
            raise FailedPrecondition(f"workspace {dom.spec.name} is not running")
        return dom

    def exec(
        self, workspace_id: str, argv: Sequence[str], stdin: bytes, timeout_s: float
    ) -> ExecOutcome:
        with self._up():
            dom = self._running(workspace_id)
            name, host = dom.spec.name, dom.spec.hostname or dom.spec.name
            files, size = dom.files, (dom.spec.cpus, dom.spec.memory_mib)
            booting = time.monotonic() - dom.booted_at < self._cfg.guest_agent_after_s
        if booting or any(fnmatch.fnmatchcase(name, pat) for pat in self._cfg.no_guest_agent):
            raise no_guest_agent(name)
        return run_in_guest(argv, stdin, timeout_s, host, files=files, size=size)

    def open_console(self, workspace_id: str) -> ConsoleSession:
        with self._up():
            dom = self._running(workspace_id)
            console = FakeConsole(
                dom.spec.hostname or dom.spec.name, lambda c: self._forget(workspace_id, c)
            )
            self._consoles.setdefault(workspace_id, []).append(console)
            return console

    def _forget(self, workspace_id: str, console: FakeConsole) -> None:
        with self._lock:
            left = [c for c in self._consoles.get(workspace_id, []) if c is not console]
            if left:
                self._consoles[workspace_id] = left
            else:
                self._consoles.pop(workspace_id, None)

    # -- test helpers (a person's actions behind the agent's back) ---------------------

    def guest_file(self, workspace_id: str, path: str) -> bytes | None:
        """A file written in the guest through exec (None: none)."""
        with self._lock:
            d = self._domains.get(workspace_id)
            return None if d is None else d.files.get(path)

    def spec_of(self, workspace_id: str) -> DomainSpec | None:
        with self._lock:
            d = self._domains.get(workspace_id)
            return None if d is None else d.spec
