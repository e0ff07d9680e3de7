"""The libvirt driver: KVM (or QEMU TCG) domains through libvirt-python.

Every call blocks; the agent calls from worker threads, and the driver is safe to
use from several at once (libvirt connections are thread-safe; our own shared
state is behind locks). Design points:

* **Ownership lives in the domain.** We only list, report and touch domains whose
  XML carries our metadata (see ``domain_xml``) and whose name matches the
  workspace id recorded there. A domain someone defined by hand is invisible.
* **One connection, reopened when it drops.** A call that fails on a dead
  connection is retried once on a fresh one. Every libvirt error leaves as a
  DriverError naming the operation and the workspace.
* **Events only speed things up.** libvirt's default event loop runs in one
  daemon thread per process (registered before any connection is opened);
  lifecycle events are queued to a per-driver dispatcher thread, which checks
  ownership and calls the agent's callback, so neither a slow callback nor a
  libvirt call ever runs on the event loop thread. The periodic full resync is the
  agent's reconcile pass (``resync_interval_s``), the same for every driver.
* ``reboot`` asks the guest (``virDomainReboot``: the guest agent, else the ACPI
  button and a restart once it powered off) and waits for the reset QEMU reports;
  ``reset`` is the reset button, for a guest that did not reboot in time.
* libvirt's event loop and the connection live in ``libvirt_conn``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

import agent.virt.limits as lim
import agent.virt.netshape as netshape
from agent.virt.base import (
    ConsoleSession,
    DomainInfo,
    DomainSpec,
    DomainState,
    Driver,
    EventCallback,
    domain_name,
)
from agent.virt.domain_xml import (
    METADATA_NS,
    METADATA_PREFIX,
    Ownership,
    build_domain_xml,
    ownership_xml,
    parse_ownership,
)
from agent.virt.guest_agent import exec_command
from agent.virt.libvirt_conn import EVENT_LOOP, LibvirtConnection
from agent.virt.libvirt_conn import error_code as _code
from agent.virt.libvirt_conn import error_message as _message
from agent.virt.libvirt_guest import LibvirtConsole, agent_error
from workspace.config import LibvirtConfig
from workspace.domain.model import ExecOutcome
from workspace.domain.netpolicy import Limits
from workspace.errors import DriverError, FailedPrecondition, NotFound
from workspace.log import about

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    # Blocked on a host resource: still running as far as anyone is concerned.
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
}

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _reason_names(prefix: str) -> dict[int, str]:
    """{value: "name"} of libvirt's VIR_DOMAIN_<STATE>_<REASON> constants."""
    return {
        getattr(libvirt, attr): attr[len(prefix) :].lower()
        for attr in dir(libvirt)
        if attr.startswith(prefix) and not attr.endswith("_LAST")
    }


_REASONS: dict[int, dict[int, str]] = {
    state: _reason_names(f"VIR_DOMAIN_{name.upper()}_")
    for state, name in _STATE_NAMES.items()
    if state != libvirt.VIR_DOMAIN_NOSTATE
}

# Undefine removes everything libvirt keeps beside the definition; the test
# driver accepts fewer flags, hence the fallbacks (disk files are never touched).
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)

_POLL_S = 0.5


def _devices(xml: str) -> tuple[list[str], list[str]]:
    """(targets of the writable disks, host tap devices of the NICs) of a domain's XML
    (a defined domain's NICs name their taps only if we named them)."""
    root = ET.fromstring(xml)
    disks = [
        str(d.find("target").get("dev"))  # type: ignore[union-attr]
        for d in root.findall("devices/disk")
        if d.get("device", "disk") == "disk"
        and d.find("readonly") is None
        and d.find("target") is not None
    ]
    taps = [str(t.get("dev")) for t in root.findall("devices/interface/target") if t.get("dev")]
    return disks, taps


class LibvirtDriver(Driver):
    def __init__(
        self, cfg: LibvirtConfig, state_dir: str, max_output_bytes: int = 1024 * 1024
    ) -> None:
        self._cfg = cfg
        self._max_output_bytes = max_output_bytes
        # libvirt keeps the domains' state itself: nothing of ours lives in state_dir.
        del state_dir
        self.hypervisor = cfg.virt_type
        # libvirt's <shares> means cpu.weight on a cgroup v2 host, cpu.shares on v1.
        self._cgroup_v2 = lim.cgroup_v2()
        self._lock = threading.Lock()
        # Domain name -> workspace id of domains known to be ours (for events).
        self._owned_names: dict[str, str] = {}
        self._callback: EventCallback | None = None
        self._changed = threading.Condition()
        # Domain name -> the resets libvirt reported (under _changed): a reboot waits for one.
        self._resets: dict[str, int] = {}
        # (domain name, event); None stops the dispatcher.
        self._events: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._closed = False
        self._shaper = netshape.Shaper()  # the taps' policers (net_mbps)
        EVENT_LOOP.acquire()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="libvirt-dispatch", daemon=True
        )
        self._dispatcher.start()
        self._conn = LibvirtConnection(cfg.uri, self._on_lifecycle, self._on_reset)
        try:
            self._conn.get()
        except (libvirt.libvirtError, DriverError) as exc:
            # Not fatal: every call reconnects, and the agent's resync will retry.
            log.warning("libvirt: cannot connect to %s yet: %s", cfg.uri, exc)

    @property
    def connection(self) -> LibvirtConnection:
        """The connection wrapper (diagnostics and tests: ``connection.get()``)."""
        return self._conn

    # -- plumbing ----------------------------------------------------------------------

    def _run(self, op: str, workspace_id: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)``; retry once on a fresh connection if this one died."""
        what = f"workspace {workspace_id}" if workspace_id else f"host {self._cfg.uri}"
        if self._closed:
            raise DriverError(f"libvirt: {op} {what}: the driver is closed")
        for attempt in (1, 2):
            try:
                conn = self._conn.get()
            except libvirt.libvirtError as exc:
                raise DriverError(
                    f"libvirt: {op} {what}: cannot connect to {self._cfg.uri}: {_message(exc)}"
                ) from exc
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                if attempt == 1 and self._conn.drop_if_dead(conn):
                    log.warning("libvirt: %s %s: connection lost, retrying", op, what)
                    continue
                raise DriverError(f"libvirt: {op} {what}: {_message(exc)}") from exc
        raise DriverError(f"libvirt: {op} {what}: connection to {self._cfg.uri} keeps dropping")

    @staticmethod
    def _ownership(dom: Any) -> Ownership | None:
        """Our metadata on ``dom`` if its name matches it, else None."""
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        except libvirt.libvirtError as exc:
            if _code(exc) in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return None
            raise
        own = parse_ownership(raw)
        if own is None or dom.name() != domain_name(own.workspace_id):
            return None
        return own

    @staticmethod
    def _lookup(conn: Any, name: str) -> Any:
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _remember(self, name: str, workspace_id: str) -> None:
        with self._lock:
            self._owned_names[name] = workspace_id

    def _owned(self, conn: Any, workspace_id: str) -> tuple[Any, Ownership] | None:
        """The workspace's domain and our record on it, or None if absent or not ours."""
        name = domain_name(workspace_id)
        dom = self._lookup(conn, name)
        if dom is None:
            return None
        own = self._ownership(dom)
        if own is None or own.workspace_id != workspace_id:
            log.warning("libvirt: domain %s exists but is not owned by this agent", name)
            return None
        self._remember(name, workspace_id)
        return dom, own

    def _owned_domain(self, conn: Any, workspace_id: str) -> Any:
        found = self._owned(conn, workspace_id)
        return None if found is None else found[0]

    def _require(self, conn: Any, workspace_id: str, op: str) -> Any:
        dom = self._owned_domain(conn, workspace_id)
        if dom is None:
            raise DriverError(
                f"libvirt: {op} workspace {workspace_id}: "
                f"no domain {domain_name(workspace_id)} is defined"
            )
        return dom

    def _info(self, dom: Any, own: Ownership) -> DomainInfo:
        state, reason = dom.state(0)
        reason_name = _REASONS.get(state, {}).get(reason, str(reason))
        return DomainInfo(
            workspace_id=own.workspace_id,
            state=_STATES.get(state, DomainState.OTHER),
            reason=f"{_STATE_NAMES.get(state, str(state))}:{reason_name}",
            extra={
                "domain": dom.name(),
                "uuid": dom.UUIDString(),
                "name": own.name,
                "hostname": own.hostname,
            },
            limits=own.limits,
        )

    def _state(self, workspace_id: str, op: str) -> DomainState | None:
        def fn(conn: Any) -> DomainState | None:
            dom = self._owned_domain(conn, workspace_id)
            if dom is None:
                return None
            try:
                return _STATES.get(dom.state(0)[0], DomainState.OTHER)
            except libvirt.libvirtError as exc:
                if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return self._run(op, workspace_id, fn)

    # -- events ------------------------------------------------------------------------

    def _on_lifecycle(self, name: str, event: int) -> None:
        # Event loop thread: hand over and return at once.
        self._events.put((name, event))
        with self._changed:
            self._changed.notify_all()

    def _on_reset(self, name: str) -> None:
        # Event loop thread: count it and wake a reboot waiting for it.
        with self._changed:
            self._resets[name] = self._resets.get(name, 0) + 1
            self._changed.notify_all()

    def _dispatch(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            name, event = item
            try:
                self._deliver(name, event)
            except Exception:
                log.exception("libvirt: handling an event for domain %s failed", name)

    def _deliver(self, name: str, event: int) -> None:
        with self._lock:
            workspace_id = self._owned_names.get(name)
            if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
                self._owned_names.pop(name, None)
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            with self._changed:
                self._resets.pop(name, None)
        if workspace_id is None and name.startswith(domain_name("")):
            # Not seen yet (e.g. started behind our back): check its metadata.
            def fn(conn: Any) -> str | None:
                dom = self._lookup(conn, name)
                own = None if dom is None else self._ownership(dom)
                return None if own is None else own.workspace_id

            try:
                workspace_id = self._run(f"inspect domain {name} for an event on", "", fn)
            except DriverError as exc:
                log.debug("%s", exc)
            if workspace_id is not None and event != libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
                self._remember(name, workspace_id)
        callback = self._callback
        if workspace_id is not None and callback is not None:
            callback(workspace_id)

    def set_event_callback(self, callback: EventCallback | None) -> None:
        self._callback = callback

    # -- Driver ------------------------------------------------------------------------

    def list_domains(self) -> list[DomainInfo]:
        def fn(conn: Any) -> list[DomainInfo]:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    own = self._ownership(dom)
                    if own is not None:
                        out.append(self._info(dom, own))
                        self._remember(dom.name(), own.workspace_id)
                except libvirt.libvirtError as exc:
                    if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # gone meanwhile: skip
                        raise
            return out

        return self._run("list domains on", "", fn)

    def get(self, workspace_id: str) -> DomainInfo | None:
        def fn(conn: Any) -> DomainInfo | None:
            found = self._owned(conn, workspace_id)
            if found is None:
                return None
            try:
                return self._info(*found)
            except libvirt.libvirtError as exc:
                if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return self._run("get", workspace_id, fn)

    def define(self, spec: DomainSpec) -> None:
        def fn(conn: Any) -> None:
            name = spec.domain_name
            uuid_str = ""
            existing = self._lookup(conn, name)
            if existing is not None:
                own = self._ownership(existing)
                if own is None or own.workspace_id != spec.workspace_id:
                    raise DriverError(
                        f"libvirt: define workspace {spec.workspace_id}: a domain named "
                        f"{name} exists that this agent does not own; remove or rename it"
                    )
                uuid_str = existing.UUIDString()
            xml = build_domain_xml(spec, self._cfg, uuid_str, cgroup_v2=self._cgroup_v2)
            self._remember(name, spec.workspace_id)
            conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)

        self._run("define", spec.workspace_id, fn)

    def start(self, workspace_id: str) -> None:
        self._run("start", workspace_id, lambda c: self._require(c, workspace_id, "start").create())
        self._shape()  # its taps exist now

    def shutdown(self, workspace_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s

        def ask(conn: Any) -> bool:
            dom = self._require(conn, workspace_id, "shut down")
            if not dom.isActive():
                return True
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                # libvirt refuses to shut a paused domain down ("domain is not running"),
                # and its guest could not take the button: it runs again to do so.
                dom.resume()
            try:
                # No flags: the guest agent when one is connected, else the ACPI button.
                dom.shutdown()
            except libvirt.libvirtError:
                if not dom.isActive():
                    return True
                raise
            return False

        if self._run("shut down", workspace_id, ask):
            return True
        return self._wait_until(
            lambda: self._state(workspace_id, "shut down") in (None, DomainState.SHUTOFF),
            deadline,
        )

    def _wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """True once ``done()``, False at the deadline; rechecked at each libvirt event
        (lifecycle or reset) and at least every ``_POLL_S``."""
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(_POLL_S, remaining))
        return True

    def destroy(self, workspace_id: str) -> None:
        def fn(conn: Any) -> None:
            dom = self._require(conn, workspace_id, "destroy")
            if not dom.isActive():
                return
            try:
                dom.destroy()
            except libvirt.libvirtError:
                if dom.isActive():
                    raise

        self._run("destroy", workspace_id, fn)
        self._shape_quietly()

    def _require_running(self, conn: Any, workspace_id: str, op: str) -> Any:
        dom = self._require(conn, workspace_id, op)
        state = dom.state(0)[0]
        if _STATES.get(state) is not DomainState.RUNNING:
            raise DriverError(
                f"libvirt: {op} workspace {workspace_id}: domain is "
                f"{_STATE_NAMES.get(state, state)}, not running"
            )
        return dom

    def reboot(self, workspace_id: str, timeout_s: float) -> bool:
        name = domain_name(workspace_id)
        with self._changed:
            before = self._resets.get(name, 0)

        def ask(conn: Any) -> bool:
            dom = self._require_running(conn, workspace_id, "reboot")
            try:
                # No flags: libvirt asks the guest agent when one is connected, else it
                # presses the ACPI power button and starts the guest again once it has
                # powered off. Either way the guest stops its services and syncs its
                # disks first, which a reset would not let it do.
                dom.reboot(0)
            except libvirt.libvirtError as exc:
                log.info(
                    "libvirt: workspace %s: no clean reboot (%s)",
                    workspace_id,
                    _message(exc),
                    extra=about(workspace_id),
                )
                return False
            return True

        def rebooted() -> bool:
            with self._changed:
                if self._resets.get(name, 0) != before:
                    return True
            # Stopped meanwhile (a forced stop): nothing left to reset either.
            return self._state(workspace_id, "reboot") is not DomainState.RUNNING

        deadline = time.monotonic() + timeout_s
        return self._run("reboot", workspace_id, ask) and self._wait_until(rebooted, deadline)

    def reset(self, workspace_id: str) -> None:
        self._run(
            "reset",
            workspace_id,
            lambda c: self._require_running(c, workspace_id, "reset").reset(0),
        )

    def suspend(self, workspace_id: str) -> None:
        self._run(
            "suspend", workspace_id, lambda c: self._require(c, workspace_id, "suspend").suspend()
        )

    def resume(self, workspace_id: str) -> None:
        self._run(
            "resume", workspace_id, lambda c: self._require(c, workspace_id, "resume").resume()
        )

    def undefine(self, workspace_id: str) -> None:
        def fn(conn: Any) -> None:
            dom = self._owned_domain(conn, workspace_id)
            if dom is None:
                return
            try:
                if dom.isActive():
                    dom.destroy()
                if not dom.isPersistent():
                    return  # a transient domain is gone once destroyed
            except libvirt.libvirtError as exc:
                if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            for flags in _UNDEFINE_FLAGS:
                try:
                    dom.undefineFlags(flags)
                    return
                except libvirt.libvirtError as exc:
                    if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                        return
                    unsupported = (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)
                    if flags and _code(exc) in unsupported:
                        continue
                    raise

        self._run("undefine", workspace_id, fn)
        self._shape_quietly()

    def set_size(self, workspace_id: str, cpus: int, memory_mib: int) -> bool:
        """In the persistent definition: the maximum and current vCPUs and memory, each
        pair set in the order that keeps current <= maximum at every step."""

        def fn(conn: Any) -> bool:
            dom = self._require(conn, workspace_id, "resize")
            if dom.isActive():
                raise DriverError(f"libvirt: resize workspace {workspace_id}: domain is running")
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            have_cpus = int(root.findtext("vcpu") or 0)
            have_kib = int(root.findtext("memory") or 0)  # libvirt writes KiB
            kib = memory_mib * 1024
            if (have_cpus, have_kib) == (cpus, kib):
                return False
            config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            vcpus = [config | libvirt.VIR_DOMAIN_VCPU_MAXIMUM, config]
            for flags in vcpus if cpus > have_cpus else reversed(vcpus):
                dom.setVcpusFlags(cpus, flags)
            memory = [config | libvirt.VIR_DOMAIN_MEM_MAXIMUM, config]
            for flags in memory if kib > have_kib else reversed(memory):
                dom.setMemoryFlags(kib, flags)
            return True

        return self._run("resize", workspace_id, fn)

    def set_limits(self, workspace_id: str, limits: Limits) -> None:
        """CPU tuning and every writable disk's throttle, live (when running) and in the
        persistent definition; then our metadata, which is what ``get`` reports and the
        agent compares with the order, and which the NICs' policers follow."""

        def fn(conn: Any) -> None:
            found = self._owned(conn, workspace_id)
            if found is None:
                raise DriverError(
                    f"libvirt: set limits of workspace {workspace_id}: "
                    f"no domain {domain_name(workspace_id)} is defined"
                )
            dom, own = found
            # One flag at a time: the bindings read the current values first, with the
            # same flags, and a read refuses LIVE|CONFIG together.
            affect = [libvirt.VIR_DOMAIN_AFFECT_CONFIG]
            if dom.isActive():
                affect.insert(0, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            disks, _ = _devices(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            record = ownership_xml(dataclasses.replace(own, limits=limits))
            for flags in affect:
                dom.setSchedulerParametersFlags(
                    lim.scheduler_params(limits, self._cgroup_v2), flags
                )
                for target in disks:
                    dom.setBlockIoTune(target, lim.block_params(limits), flags)
                dom.setMetadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT, record, METADATA_PREFIX, METADATA_NS, flags
                )

        self._run("set limits of", workspace_id, fn)
        self._shape()

    def _shape_quietly(self) -> None:
        """``_shape`` after a domain went away: a policer left behind is only untidy."""
        try:
            self._shape()
        except DriverError as exc:
            log.warning("libvirt: %s", exc)

    def _shape(self) -> None:
        """Police the taps of every running domain of ours that has a network limit, and
        no other (agent/virt/netshape.py; the taps are in this process's namespace)."""

        def fn(conn: Any) -> dict[str, int]:
            taps: dict[str, int] = {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    own = self._ownership(dom)
                    if own is None or not own.limits.net_mbps:
                        continue
                    for tap in _devices(dom.XMLDesc(0))[1]:
                        taps[tap] = own.limits.net_mbps
                except libvirt.libvirtError as exc:
                    if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return taps

        self._shaper.apply(self._run("list the network limits on", "", fn))

    def resync_host(self) -> None:
        """The policers, rewritten if their table is not what was written (a restarted
        agent rewrites it once, whatever it finds)."""
        self._shape()

    # -- inside the guest --------------------------------------------------------------

    def _running_domain(self, conn: Any, workspace_id: str) -> tuple[Any, str]:
        """The workspace's running domain and the workspace's name."""
        found = self._owned(conn, workspace_id)
        if found is None:
            raise NotFound(f"workspace {workspace_id} has no domain on this node")
        dom, own = found
        name = own.name or workspace_id
        state = dom.state(0)[0]
        if _STATES.get(state) is not DomainState.RUNNING:
            raise FailedPrecondition(
                f"workspace {name} is not running ({_STATE_NAMES.get(state, state)})"
            )
        return dom, name

    def exec(
        self, workspace_id: str, argv: Sequence[str], stdin: bytes, timeout_s: float
    ) -> ExecOutcome:
        def call(command: dict[str, Any], timeout: int) -> dict[str, Any]:
            def fn(conn: Any) -> str:
                dom, name = self._running_domain(conn, workspace_id)
                try:
                    return str(libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), timeout, 0))
                except libvirt.libvirtError as exc:
                    # A dead connection: _run retries once on a fresh one -- but never a
                    # guest-exec, which may have started the command already.
                    if command["execute"] != "guest-exec" and self._conn.drop_if_dead(conn):
                        raise
                    raise agent_error(exc, name) from exc

            reply = json.loads(self._run("run a command in", workspace_id, fn))
            if not isinstance(reply, dict):
                raise DriverError(f"libvirt: the guest agent answered {reply!r}")
            return reply

        return exec_command(call, argv, stdin, timeout_s, self._max_output_bytes)

    def open_console(self, workspace_id: str) -> ConsoleSession:
        def fn(conn: Any) -> ConsoleSession:
            dom, name = self._running_domain(conn, workspace_id)
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                # FORCE: a new attach takes the console from an earlier one (which then
                # ends); SAFE: only where libvirt can keep sessions apart (QEMU can).
                dom.openConsole(
                    None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE | libvirt.VIR_DOMAIN_CONSOLE_SAFE
                )
                return LibvirtConsole(stream, name)
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise

        return self._run("open the console of", workspace_id, fn)

    def host_capacity(self) -> tuple[int, int]:
        # getInfo: [model, memory MiB, cpus, MHz, NUMA nodes, sockets, cores, threads]
        info = self._run("read capacity of", "", lambda c: c.getInfo())
        return int(info[2]), int(info[1])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._conn.close()
        self._events.put(None)
        self._dispatcher.join(timeout=5.0)
        EVENT_LOOP.release()
