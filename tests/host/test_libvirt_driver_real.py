"""The LibvirtDriver against a real libvirtd and QEMU (TCG), booting a tiny guest.

The guest has no NIC (no traffic can leave it): Debian's kernel, booted directly,
with an initramfs of busybox-static whose /init prints a marker on the serial
console and sleeps. The console log must keep every boot (reboot and restart
append to the same file).

If no libvirtd answers at qemu:///system, the module fixture starts virtlogd and
libvirtd itself, and at teardown stops exactly those two processes by the pids
their pid files recorded. It never edits libvirt's configuration.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import gzip
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

from agent.virt.base import DomainSpec, DomainState  # noqa: E402
from agent.virt.libvirt_driver import LibvirtDriver  # noqa: E402
from workspace.config import LibvirtConfig  # noqa: E402

pytestmark = pytest.mark.host

URI = "qemu:///system"
MARKER = "HELLO-FROM-GUEST"
BOOT_TIMEOUT_S = 90.0
_DAEMONS = (("virtlogd", "/var/run/virtlogd.pid"), ("libvirtd", "/var/run/libvirtd.pid"))

INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo {MARKER} cpus=$(/bin/busybox nproc) \
  $(/bin/busybox grep MemTotal /proc/meminfo | /bin/busybox tr -s ' ' =)
exec /bin/busybox sleep 1000
"""


def _reachable() -> bool:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_pid(path: str, name: str) -> int | None:
    """The pid in ``path`` if that process is alive and is ``name``."""
    try:
        pid = int(Path(path).read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name else None


def _stop(pid: int, name: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        print(f"{name} (pid {pid}) ignored SIGTERM; killed")


class Daemons:
    """The virtlogd/libvirtd this module started (if any), by pid."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}

    @property
    def owns_libvirtd(self) -> bool:
        return "libvirtd" in self.started

    def start(self, name: str, pid_file: str) -> None:
        if _read_pid(pid_file, name) is not None:
            return  # already running (e.g. a virtlogd someone else left): not ours
        # -d forks into the background once the daemon is initialised.
        subprocess.run([name, "-d"], check=True, timeout=30)
        deadline = time.monotonic() + 10
        pid = _read_pid(pid_file, name)
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.1)
            pid = _read_pid(pid_file, name)
        if pid is None:
            pytest.skip(f"{name} -d started but wrote no pid to {pid_file}")
        self.started[name] = pid

    def wait_reachable(self) -> None:
        deadline = time.monotonic() + 15
        while not _reachable():
            if time.monotonic() > deadline:
                pytest.skip(f"started libvirtd but {URI} is not reachable")
            time.sleep(0.2)

    def restart_libvirtd(self) -> None:
        """Stop and start the libvirtd we own (running domains survive this)."""
        _stop(self.started.pop("libvirtd"), "libvirtd")
        self.start("libvirtd", _DAEMONS[1][1])
        self.wait_reachable()

    def stop_all(self) -> None:
        for name in ("libvirtd", "virtlogd"):
            pid = self.started.pop(name, None)
            if pid is not None:
                _stop(pid, name)


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Daemons]:
    """A reachable qemu:///system; started here (and stopped again) only if needed."""
    daemons = Daemons()
    if _reachable():
        yield daemons
        return
    if os.geteuid() != 0:
        pytest.skip("needs root to start libvirtd")
    missing = [name for name, _ in _DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("kvm")
    except KeyError:
        pytest.skip("user libvirt-qemu / group kvm missing: run scripts/install-deps.sh")
    for d in ("/var/log/libvirt", "/var/run/libvirt"):
        os.makedirs(d, exist_ok=True)
    try:
        for name, pid_file in _DAEMONS:
            daemons.start(name, pid_file)
        daemons.wait_reachable()
        yield daemons
    finally:
        daemons.stop_all()


@pytest.fixture
def guest_files() -> Iterator[Path]:
    """A kernel and initramfs in a directory QEMU (user libvirt-qemu) can read."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        pytest.skip("no kernel in /boot (install linux-image-amd64)")
    if not os.path.exists("/bin/busybox"):
        pytest.skip("no /bin/busybox (install busybox-static)")
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    work = Path(tempfile.mkdtemp(prefix="ws-libvirt-real-", dir="/tmp"))
    try:
        # mkdtemp makes 0700 dirs; QEMU runs as libvirt-qemu and must traverse it.
        work.chmod(0o755)
        root = work / "root"
        for d in ("bin", "proc", "dev", "sys"):
            (root / d).mkdir(parents=True)
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        # A copy, not /boot itself: libvirt relabels (chowns) the files it gives QEMU.
        shutil.copyfile(kernels[-1], work / "vmlinuz")
        names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=names,
            check=True,
            capture_output=True,
        ).stdout
        (work / "initrd.gz").write_bytes(gzip.compress(archive))
        for f in ("vmlinuz", "initrd.gz"):
            (work / f).chmod(0o644)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _markers(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count(MARKER)
    except FileNotFoundError:
        return 0


def _wait_markers(log: Path, count: int) -> float:
    start = time.monotonic()
    while _markers(log) < count:
        if time.monotonic() - start > BOOT_TIMEOUT_S:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            pytest.fail(f"marker #{count} not on the console within {BOOT_TIMEOUT_S} s:\n{tail}")
        time.sleep(0.2)
    return time.monotonic() - start


def test_boot_reboot_pause_shutdown_undefine(libvirtd: Daemons, guest_files: Path) -> None:
    cfg = LibvirtConfig(uri=URI, virt_type="qemu")
    wid = f"hosttest-{uuid.uuid4().hex[:8]}"
    log = guest_files / "console.log"
    spec = DomainSpec(
        workspace_id=wid,
        name="host-test",
        cpus=1,
        memory_mib=256,
        kernel=str(guest_files / "vmlinuz"),
        initrd=str(guest_files / "initrd.gz"),
        cmdline="console=ttyS0 panic=-1",
        console_log=str(log),
        hostname="host-test",
    )
    events: list[str] = []
    lock = threading.Lock()

    def on_event(workspace_id: str) -> None:
        with lock:
            events.append(workspace_id)

    timings: dict[str, float] = {}
    driver = LibvirtDriver(cfg, str(guest_files / "state"))
    driver.set_event_callback(on_event)
    try:
        driver.define(spec)
        driver.define(spec)  # idempotent
        info = driver.get(wid)
        assert info is not None and info.state is DomainState.SHUTOFF

        t = time.monotonic()
        driver.start(wid)
        timings["start_call_s"] = time.monotonic() - t
        assert driver.get(wid).state is DomainState.RUNNING  # type: ignore[union-attr]
        _wait_markers(log, 1)
        timings["first_boot_s"] = time.monotonic() - t

        # A restarted agent (new driver, new connection) finds the running domain.
        second = LibvirtDriver(cfg, str(guest_files / "state"))
        try:
            assert {i.workspace_id: i.state for i in second.list_domains()}.get(wid) is (
                DomainState.RUNNING
            )
        finally:
            second.close()

        # This guest's init handles no ACPI button: the clean reboot is not taken up,
        # and the reset after it reboots it.
        t = time.monotonic()
        assert driver.reboot(wid, timeout_s=2.0) is False
        driver.reset(wid)
        _wait_markers(log, 2)
        timings["reboot_s"] = time.monotonic() - t
        assert driver.get(wid).state is DomainState.RUNNING  # type: ignore[union-attr]

        driver.suspend(wid)
        assert driver.get(wid).state is DomainState.PAUSED  # type: ignore[union-attr]
        driver.resume(wid)
        assert driver.get(wid).state is DomainState.RUNNING  # type: ignore[union-attr]

        # The busybox guest has no ACPI handler: it may ignore the power button.
        t = time.monotonic()
        if not driver.shutdown(wid, timeout_s=3.0):
            driver.destroy(wid)
        timings["shutdown_s"] = time.monotonic() - t
        assert driver.get(wid).state is DomainState.SHUTOFF  # type: ignore[union-attr]
        driver.destroy(wid)  # already off: no-op

        # Resized while shut off (the agent does it before a start): the next boot has
        # the new vCPUs and memory; the same size again changes nothing.
        assert "cpus=1 " in log.read_text(errors="replace")
        assert driver.set_size(wid, 2, 384) is True
        assert driver.set_size(wid, 2, 384) is False

        # A fresh start appends to the same console log too.
        t = time.monotonic()
        driver.start(wid)
        _wait_markers(log, 3)
        timings["restart_boot_s"] = time.monotonic() - t
        last = [ln for ln in log.read_text(errors="replace").splitlines() if MARKER in ln][-1]
        assert "cpus=2 " in last, last
        total_kib = int(last.split("MemTotal:=")[1].split("=")[0])
        assert 256 * 1024 < total_kib <= 384 * 1024, last  # the kernel keeps some for itself
        driver.destroy(wid)
        assert driver.set_size(wid, 1, 256) is True  # smaller: current first, then maximum
        assert driver.set_size(wid, 1, 256) is False
        driver.start(wid)
        _wait_markers(log, 4)
        with lock:
            assert wid in events, "no lifecycle event reached the callback"

        driver.undefine(wid)  # running: destroyed first
        assert driver.get(wid) is None
        assert wid not in {i.workspace_id for i in driver.list_domains()}
        driver.undefine(wid)  # absent: no-op
        assert (guest_files / "vmlinuz").exists()  # disks/kernels are the agent's
        print("\nreal libvirt timings: " + " ".join(f"{k}={v:.2f}" for k, v in timings.items()))
    finally:
        with contextlib.suppress(Exception):
            driver.undefine(wid)
        driver.close()


def test_reconnects_after_libvirtd_restart(
    libvirtd: Daemons, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not libvirtd.owns_libvirtd:
        pytest.skip("libvirtd was not started by this test module; not restarting it")
    cfg = LibvirtConfig(uri=URI, virt_type="qemu")
    wid = f"hosttest-{uuid.uuid4().hex[:8]}"
    # Never started: the files need not exist.
    spec = DomainSpec(wid, "reconnect", 1, 64, kernel="/nonexistent/vmlinuz")
    events: list[str] = []
    driver = LibvirtDriver(cfg, str(tmp_path))
    driver.set_event_callback(events.append)
    try:
        driver.define(spec)
        libvirtd.restart_libvirtd()
        # The old connection is dead: the call reconnects and still sees the domain.
        with caplog.at_level(logging.WARNING, logger="agent.virt.libvirt_driver"):
            info = driver.get(wid)
        assert info is not None and info.state is DomainState.SHUTOFF
        messages = [r.getMessage() for r in caplog.records]
        assert any("reconnect" in m or "retrying" in m for m in messages), messages
        # Events are registered again on the new connection.
        events.clear()
        driver.undefine(wid)
        deadline = time.monotonic() + 5
        while wid not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wid in events, "no event after reconnecting"
        assert driver.get(wid) is None
    finally:
        with contextlib.suppress(Exception):
            driver.undefine(wid)
        driver.close()


def test_a_paused_guest_is_resumed_to_take_the_shutdown(
    libvirtd: Daemons, guest_files: Path
) -> None:
    """libvirt refuses to shut a paused domain down ("Requested operation is not valid:
    domain is not running"): the agent's stop of a PAUSED workspace (`ws stop`, a lease's
    end, a stop while a pause its node made is still being reported) failed, left it
    FAILED "stop failed: ..." and failed again at every retry; only `--force` stopped it.
    The driver resumes it first, so its guest can take the button."""
    cfg = LibvirtConfig(uri=URI, virt_type="qemu")
    wid = f"hosttest-{uuid.uuid4().hex[:8]}"
    log = guest_files / "console.log"
    spec = DomainSpec(
        workspace_id=wid,
        name="host-test",
        cpus=1,
        memory_mib=256,
        kernel=str(guest_files / "vmlinuz"),
        initrd=str(guest_files / "initrd.gz"),
        cmdline="console=ttyS0 panic=-1",
        console_log=str(log),
        hostname="host-test",
    )
    driver = LibvirtDriver(cfg, str(guest_files / "state"))
    try:
        driver.define(spec)
        driver.start(wid)
        _wait_markers(log, 1)
        driver.suspend(wid)
        assert driver.get(wid).state is DomainState.PAUSED  # type: ignore[union-attr]
        # This guest's init handles no ACPI button: asked, it stays up (False); the
        # agent powers it off then, as for any guest that ignores the button.
        assert driver.shutdown(wid, timeout_s=2.0) is False
        assert driver.get(wid).state is DomainState.RUNNING  # type: ignore[union-attr]
        driver.destroy(wid)
        assert driver.get(wid).state is DomainState.SHUTOFF  # type: ignore[union-attr]
    finally:
        with contextlib.suppress(Exception):
            driver.destroy(wid)
        driver.undefine(wid)
        driver.close()
