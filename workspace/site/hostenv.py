"""The host environment of a site: a network namespace with its own private libvirtd.

``HostEnv(site_dir, netns).up()`` creates the network namespace ``netns`` (loopback
up) and starts a virtlogd and a libvirtd *inside* it, so the tap devices of the
site's VMs are created in the namespace and no VM traffic can leave it. The two
daemons also run in a private mount namespace in which the fixed paths of a root
libvirtd are bind mounts of directories of the site::

    /etc/libvirt       <- <site_dir>/libvirt/etc     (our libvirtd.conf, qemu.conf, ...)
    /run/libvirt       <- <site_dir>/libvirt/run     (sockets, running domains' status)
    /var/lib/libvirt   <- <site_dir>/libvirt/lib     (per-domain monitor sockets, ...)
    /var/cache/libvirt <- <site_dir>/libvirt/cache   (QEMU capabilities cache)
    /var/log/libvirt   <- <site_dir>/libvirt/log     (daemon logs, qemu/<domain>.log)

so a site's libvirtd collides neither with another site's nor with the system's,
and its state survives a daemon crash. Because a bind mount shares the inodes, the
daemon's socket is reachable from anywhere at ``<site_dir>/libvirt/run/libvirt-sock``:
``libvirt_uri`` is ``qemu+unix:///system?socket=<that path>``. Processes of the site
(service, agent, dnsmasq) are started with ``run_prefix()`` (``ip netns exec NS``);
they do not need the private mount namespace. See docs/design/host-environment.md.

Processes are only ever stopped by their recorded pid, after checking that
``/proc/<pid>/cmdline`` is still the command we started (never by name; the helpers
are ``workspace.hostproc``'s, shared with the site launcher and ``agent.net.dhcp``).
``down()`` also stops whatever still runs inside the site's network namespace (the
VMs' QEMU processes after a libvirtd crash, a forgotten dnsmasq), found by namespace
membership.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from workspace import errors
from workspace.files import open_private, write_private, write_public
from workspace.hostproc import (
    Matcher,
    cmdline_has,
    pid_if_ours,
    process_alive,
    read_pid_file,
    stop_process,
    terminate_all,
)
from workspace.ports import UNIX_PATH_MAX
from workspace.site import qemu_access
from workspace.site.qemu_access import QEMU_GROUP, QEMU_USER

log = logging.getLogger(__name__)

# Paths a root libvirtd uses (fixed at build time) -> sub directory of <site>/libvirt.
LIBVIRT_DIRS: tuple[tuple[str, str], ...] = (
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/cache/libvirt", "cache"),
    ("/var/log/libvirt", "log"),
)
DAEMONS = ("virtlogd", "libvirtd")  # start order; stopped in reverse
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# The private libvirtd's directories under the site (what a umask of 022 made them):
# root's libvirtd reads its configuration there, so nobody else may write them.
CONFIG_DIR_MODE = 0o755
_NETNS_DIR = Path("/run/netns")
_NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

LIBVIRTD_CONF = """\
# Written by workspace.site.hostenv for this site's private libvirtd.
# Only root (the site's agent) talks to this daemon, over a unix socket.
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

VIRTLOGD_CONF = """\
# Written by workspace.site.hostenv for this site's private virtlogd.
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
"""

# QEMU runs as an unprivileged user (workspace.site.qemu_access: libvirt-qemu, group
# kvm for /dev/kvm). libvirt's DAC driver, always stacked by a privileged libvirtd,
# chowns the files of a running domain (disks and their backing files, kernel, initrd)
# to that user and back; remember_owner keeps a reference count in xattrs, so a base
# shared by several domains goes back to its owner only when the last one stops. Only
# the MAC drivers are off (security_driver = "none"): AppArmor would write profiles
# into the host's /etc/apparmor.d, outside the site, from a libvirtd that is not the
# host's. Console logs are written by virtlogd (root).
QEMU_CONF = f"""\
# Written by workspace.site.hostenv for this site's private libvirtd.
# QEMU runs unprivileged; libvirt chowns each domain's files to it while it runs.
user = "{QEMU_USER}"
group = "{QEMU_GROUP}"
dynamic_ownership = 1
remember_owner = 1
# No MAC driver (AppArmor, SELinux) for a private libvirtd; DAC above stays on.
security_driver = "none"
stdio_handler = "logd"
"""


# --- network namespaces ---------------------------------------------------------------


def netns_path(name: str) -> Path:
    return _NETNS_DIR / name


def netns_exists(name: str) -> bool:
    path = netns_path(name)
    return path.exists() and os.path.ismount(path)


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_path(name)).st_ino if netns_exists(name) else None
    except FileNotFoundError:
        return None


def pid_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def netns_pids(name: str) -> list[int]:
    """Live processes whose network namespace is ``name`` (``ip netns pids``)."""
    inode = netns_inode(name)
    if inode is None:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if pid != os.getpid() and pid_netns_inode(pid) == inode and process_alive(pid):
                pids.append(pid)
    return sorted(pids)


def _run(cmd: Sequence[str], timeout_s: float = 30.0) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise errors.Unavailable(
            f"{shlex.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )


def create_netns(name: str) -> None:
    """``ip netns add NAME`` (if absent) with the loopback up; idempotent."""
    if not _NETNS_NAME.match(name):
        raise errors.InvalidArgument(
            f"network namespace name {name!r}: use letters, digits, '_', '.', '-'"
        )
    if netns_path(name).exists() and not netns_exists(name):
        # A half-made namespace (crash between the file and its bind mount).
        _run(["ip", "netns", "del", name])
    if not netns_exists(name):
        _run(["ip", "netns", "add", name])
    from pyroute2 import IPRoute

    with IPRoute(netns=name, flags=0) as ipr:
        (index,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=index, state="up")


def delete_netns(name: str) -> None:
    """``ip netns del NAME`` if it exists."""
    if netns_path(name).exists():
        _run(["ip", "netns", "del", name])


def kill_netns_processes(name: str, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process inside network namespace ``name``.

    Membership of the (uniquely named) namespace is what makes them ours; each pid
    is re-checked before every signal, so a pid reused meanwhile is left alone.
    """
    inode = netns_inode(name)
    pids = netns_pids(name)
    if inode is None or not pids:
        return []

    def still_inside(pid: int) -> bool:
        return process_alive(pid) and pid_netns_inode(pid) == inode

    _, left = terminate_all(pids, still_inside, timeout_s)
    if left:
        raise errors.Unavailable(f"processes {left} in network namespace {name} survived SIGKILL")
    return pids


# --- the site's host environment ------------------------------------------------------


def check_host() -> list[str]:
    """Problems that keep a private libvirtd from starting here (empty: none)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root")
    for tool in ("ip", "unshare", "nsenter", "libvirtd", "virtlogd"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found")
    # QEMU runs as libvirt-qemu (group kvm), and libvirt's QEMU driver also resolves its
    # build-time group at start-up (Debian builds with libvirt-qemu:libvirt-qemu); up()
    # creates them where missing (qemu_access.ensure_account).
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        problems.append("user libvirt-qemu does not exist")
    try:
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        problems.append("group libvirt-qemu does not exist")
    return problems


class HostEnv:
    """A network namespace plus a private virtlogd + libvirtd running inside it.

    ``up()`` and ``down()`` are idempotent and safe after a crash at any point.
    """

    def __init__(
        self,
        site_dir: Path | str,
        netns: str,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        if not _NETNS_NAME.match(netns):
            raise errors.InvalidArgument(
                f"network namespace name {netns!r}: use letters, digits, '_', '.', '-'"
            )
        self.site_dir = Path(site_dir).absolute()
        self.netns = netns
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.libvirt_dir = self.site_dir / "libvirt"
        self.pid_dir = self.libvirt_dir / "pids"
        self.libvirt_socket = self.libvirt_dir / "run" / "libvirt-sock"
        # What the agent (or virsh -c) must use; reachable from any namespace.
        self.libvirt_uri = f"qemu+unix:///system?socket={self.libvirt_socket}"

    # -- public ------------------------------------------------------------------------

    def run_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the site (its network namespace)."""
        return ["ip", "netns", "exec", self.netns]

    def host_path(self, site_path: str | Path) -> Path:
        """Where a path of the private libvirtd (e.g. /var/log/libvirt/qemu/x.log) is."""
        path = Path(site_path)
        for inside, sub in LIBVIRT_DIRS:
            if path == Path(inside) or Path(inside) in path.parents:
                return self.libvirt_dir / sub / path.relative_to(inside)
        return path

    def pid(self, daemon: str) -> int | None:
        """The pid of our running ``virtlogd`` or ``libvirtd``, if it runs."""
        return pid_if_ours(read_pid_file(self._pid_file(daemon)), self._matcher(daemon))

    def running(self) -> bool:
        inode = netns_inode(self.netns)
        pids = [self.pid(d) for d in DAEMONS]
        return inode is not None and all(
            p is not None and pid_netns_inode(p) == inode for p in pids
        )

    def up(self) -> None:
        """Create what is missing: namespace, config, daemons; wait until libvirtd answers."""
        if os.geteuid() == 0:
            for made in qemu_access.ensure_account():
                log.info("created %s (QEMU of the site runs as %s)", made, QEMU_USER)
        problems = check_host()
        if problems:
            raise errors.FailedPrecondition(
                "cannot start a private libvirtd: "
                + "; ".join(problems)
                + " (run scripts/install-deps.sh as root)"
            )
        if len(str(self.libvirt_socket)) > UNIX_PATH_MAX:
            raise errors.InvalidArgument(
                f"site directory {self.site_dir} is too long for a unix socket path "
                f"({self.libvirt_socket}: more than {UNIX_PATH_MAX} bytes); use a shorter one"
            )
        with self._locked():
            # QEMU (unprivileged) must be able to reach the site's disks and kernels.
            for d in qemu_access.ensure_traversable(self.site_dir):
                log.warning("gave %s search permission (ACL --x) on %s", QEMU_USER, d)
            create_netns(self.netns)
            self.write_config()
            inode = netns_inode(self.netns)
            for daemon in DAEMONS:
                pid = self.pid(daemon)
                if pid is not None and pid_netns_inode(pid) != inode:
                    log.warning(
                        "%s (pid %d) runs outside %s: restarting it", daemon, pid, self.netns
                    )
                    stop_process(pid, self._matcher(daemon), self.stop_timeout_s)
            missing = [d for d in DAEMONS if self.pid(d) is None]
            if missing:
                self._start(missing)
            self._wait_ready()
            self._write_record()

    def down(self) -> None:
        """Stop the site's VMs and daemons, remove the namespace; keep the site's files."""
        with self._locked():
            if self.pid("libvirtd") is not None:
                self._destroy_domains()
            for daemon in reversed(DAEMONS):
                stop_process(self.pid(daemon), self._matcher(daemon), self.stop_timeout_s)
                self._pid_file(daemon).unlink(missing_ok=True)
            stragglers = kill_netns_processes(self.netns)
            if stragglers:
                log.info(
                    "stopped %d leftover process(es) in %s: %s",
                    len(stragglers),
                    self.netns,
                    stragglers,
                )
            delete_netns(self.netns)

    # -- internals ---------------------------------------------------------------------

    def _pid_file(self, daemon: str) -> Path:
        return self.pid_dir / f"{daemon}.pid"

    def _matcher(self, daemon: str) -> Matcher:
        return cmdline_has(daemon, "-p", str(self._pid_file(daemon)))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.site_dir.mkdir(parents=True, exist_ok=True)
        with open_private(self.site_dir / "hostenv.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def write_config(self) -> None:
        """The private libvirtd's directories and configuration files, as root's
        libvirtd reads them: writable by their owner alone (directories 0755, files
        0644), whatever the umask, also if an earlier start left them otherwise."""
        ours = [self.libvirt_dir, *(self.libvirt_dir / sub for _, sub in LIBVIRT_DIRS)]
        ours += [self.libvirt_dir / "mnt", self.libvirt_dir / "mnt" / "cgroup", self.pid_dir]
        for d in ours:  # parents first
            d.mkdir(mode=CONFIG_DIR_MODE, exist_ok=True)
            d.chmod(CONFIG_DIR_MODE)
        etc = self.libvirt_dir / "etc"
        for name, text in (
            ("libvirtd.conf", LIBVIRTD_CONF),
            ("virtlogd.conf", VIRTLOGD_CONF),
            ("qemu.conf", QEMU_CONF),
        ):
            path = etc / name
            if not path.exists() or path.read_text() != text:
                write_public(path, text)
            path.chmod(0o644)
        # The mount points must exist on the host (empty directories, never written).
        for inside, _ in LIBVIRT_DIRS:
            Path(inside).mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)

    def _start_commands(self, daemons: Sequence[str]) -> list[str]:
        lines = []
        for daemon in daemons:
            binary = shutil.which(daemon)
            assert binary is not None  # check_host() passed
            conf = f"/etc/libvirt/{daemon}.conf"
            argv = [binary, "-d", "-p", str(self._pid_file(daemon)), "-f", conf]
            lines.append(shlex.join(argv))
        return lines

    def _start(self, daemons: Sequence[str]) -> None:
        anchor = next((p for p in (self.pid(d) for d in DAEMONS) if p is not None), None)
        starts = self._start_commands(daemons)
        if anchor is not None:
            # Join the mount and network namespaces of the daemon that still runs.
            script = "\n".join(["set -eu", *starts])
            cmd = ["nsenter", "-t", str(anchor), "-m", "-n", "sh", "-c", script]
        else:
            cmd = self._fresh_namespace_command(starts)
        log.info("starting %s in %s", " and ".join(daemons), self.netns)
        launch_log = self.libvirt_dir / "log" / "launch.log"
        with launch_log.open("ab") as out:
            out.write(f"--- {time.ctime()}: {shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=self.start_timeout_s,
                check=False,
                start_new_session=True,
            )
        if proc.returncode != 0:
            raise errors.Unavailable(
                f"starting {', '.join(daemons)} in {self.netns} failed (exit {proc.returncode});"
                f" see {launch_log} and {self.libvirt_dir / 'log'}:\n{self._log_tail()}"
            )

    def _fresh_namespace_command(self, starts: Sequence[str]) -> list[str]:
        """unshare a private mount namespace, bind the libvirt dirs, enter the netns, start.

        ``ip netns exec`` remounts /sys for the namespace, which hides the cgroup
        hierarchies; they are staged aside first and put back, so libvirt can give its
        VMs cgroups (cpu quotas and the like).
        """
        stage = self.libvirt_dir / "mnt" / "cgroup"
        cgroups = os.path.ismount("/sys/fs/cgroup")
        inner = ["set -eu"]
        if cgroups:
            q = shlex.quote(str(stage))
            inner += [f"mount --rbind {q} /sys/fs/cgroup", f"umount -l {q}"]
        for inside, sub in LIBVIRT_DIRS:
            inner.append(f"mount --bind {shlex.quote(str(self.libvirt_dir / sub))} {inside}")
        inner += starts
        outer = ["set -eu"]
        if cgroups:
            outer.append(f"mount --rbind /sys/fs/cgroup {shlex.quote(str(stage))}")
        outer.append(
            f"exec ip netns exec {shlex.quote(self.netns)} sh -c {shlex.quote(chr(10).join(inner))}"
        )
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(outer)]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last = "no pid file yet"
        while True:
            missing = [d for d in DAEMONS if self.pid(d) is None]
            if not missing:
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                        sock.settimeout(2.0)
                        sock.connect(str(self.libvirt_socket))
                    break
                except OSError as exc:
                    last = f"{self.libvirt_socket}: {exc}"
            else:
                last = f"{', '.join(missing)} not running"
            if time.monotonic() >= deadline:
                raise errors.Unavailable(
                    f"the private libvirtd of {self.netns} did not come up ({last});"
                    f" logs in {self.libvirt_dir / 'log'}:\n{self._log_tail()}"
                )
            time.sleep(0.1)
        self._check_libvirt(deadline)

    def _check_libvirt(self, deadline: float) -> None:
        """One real call (the drivers initialise after the socket exists)."""
        try:
            import libvirt
        except ImportError:  # pragma: no cover - libvirt-python is optional
            return

        result: list[BaseException | None] = []

        def probe() -> None:
            try:
                conn = libvirt.open(self.libvirt_uri)
                try:
                    conn.getLibVersion()
                finally:
                    conn.close()
                result.append(None)
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=probe, name="libvirt-probe", daemon=True)
        thread.start()
        thread.join(max(1.0, deadline - time.monotonic()))
        if not result:
            raise errors.Unavailable(f"the private libvirtd of {self.netns} does not answer")
        if result[0] is not None:
            raise errors.Unavailable(
                f"the private libvirtd of {self.netns} refuses connections: {result[0]}"
            )

    def _destroy_domains(self, timeout_s: float = 30.0) -> None:
        """Best effort: destroy running domains through libvirt so it cleans up after them."""
        try:
            import libvirt
        except ImportError:  # pragma: no cover
            return

        def destroy_all() -> None:
            try:
                conn = libvirt.open(self.libvirt_uri)
                try:
                    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.destroy()
                finally:
                    conn.close()
            except libvirt.libvirtError as exc:
                log.warning("could not destroy the domains of %s: %s", self.netns, exc)

        thread = threading.Thread(target=destroy_all, name="libvirt-destroy", daemon=True)
        thread.start()
        thread.join(timeout_s)

    def _write_record(self) -> None:
        record = {
            "netns": self.netns,
            "libvirt_uri": self.libvirt_uri,
            "run_prefix": self.run_prefix(),
            "pids": {d: self.pid(d) for d in DAEMONS},
        }
        write_private(
            self.site_dir / "hostenv.json", json.dumps(record, indent=2, sort_keys=True) + "\n"
        )

    def _log_tail(self, lines: int = 15) -> str:
        out = []
        for name in ("launch.log", "libvirtd.log", "virtlogd.log"):
            path = self.libvirt_dir / "log" / name
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"== {path}\n" + "\n".join(tail))
        return "\n".join(out)
