"""One DHCP-only dnsmasq per bridge, serving static leases projected from the store.

dnsmasq never picks an address itself: ``--dhcp-range=<net>,static`` answers only the
MACs listed in the hosts file (``MAC,IP[,HOSTNAME]`` lines), which ``set_hosts``
rewrites atomically. Additions and renames are applied with SIGHUP (dnsmasq re-reads
``--dhcp-hostsfile``); when a MAC/IP binding goes away, dnsmasq is restarted with the
stale leases removed from its lease file, because dnsmasq refuses to give an address
that is still leased to another MAC ("not using configured address ... because it is
leased to ...") until that lease expires, which would block reusing an IP at once.

Everything lives in ``state_dir``: ``hosts``, ``leases`` (0600: every VM's MAC, address
and hostname), ``dnsmasq.pid`` (written by dnsmasq once its socket is bound) and
``dnsmasq.log`` (0600). A DhcpServer made for the same state dir after an agent restart
finds the dnsmasq it started before (pid file + ``/proc/<pid>/cmdline`` naming that pid
file) instead of starting a second one; dnsmasq runs in its own session and survives the
agent. It is stopped by pid only.

dnsmasq drops root for ``nobody`` after start-up and re-reads the hosts file as that
user on SIGHUP, so the hosts file must be readable by it: with ``user=None`` dnsmasq
runs as nobody when the state dir allows it, else as root (with a warning).
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workspace import errors
from workspace.files import private_fd
from workspace.hostproc import (
    cmdline_has,
    pid_if_ours,
    process_cmdline,
    read_pid_file,
    stop_process,
)

log = logging.getLogger(__name__)

HOSTS_FILE = "hosts"
LEASES_FILE = "leases"
# The lease file: root's alone (it names the tenants' VMs: MACs, addresses, hostnames).
LEASES_MODE = 0o600
PID_FILE = "dnsmasq.pid"
LOG_FILE = "dnsmasq.log"
# dnsmasq logs every DHCP exchange (each lease renewal too) to its log for as long as it
# runs: past this size the log is moved to dnsmasq.log.1 (the one before it dropped)
# and started afresh; dnsmasq appends (O_APPEND), so it writes on at the new end.
LOG_MAX_BYTES = 4 * 1024 * 1024
MIN_LEASE_TIME_S = 120  # dnsmasq's minimum
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class DhcpHost:
    """One static lease: this MAC gets this IP (and this hostname, DHCP option 12)."""

    mac: str
    ip: str
    hostname: str = ""

    def line(self) -> str:
        return ",".join(
            (self.mac, self.ip, self.hostname) if self.hostname else (self.mac, self.ip)
        )


HostEntry = DhcpHost | tuple[str, str, str] | tuple[str, str]


def _to_host(entry: HostEntry) -> DhcpHost:
    return entry if isinstance(entry, DhcpHost) else DhcpHost(*entry)


def normalize_hosts(
    entries: Iterable[HostEntry],
    subnet: ipaddress.IPv4Network | None = None,
    router: str | None = None,
) -> list[DhcpHost]:
    """Validated entries (MACs lower case), sorted by IP; raises InvalidArgument."""
    hosts: list[DhcpHost] = []
    macs: set[str] = set()
    ips: set[ipaddress.IPv4Address] = set()
    for entry in entries:
        host = _to_host(entry)
        mac = host.mac.strip().lower()
        if not _MAC.match(mac) or int(mac[:2], 16) & 1:
            raise errors.InvalidArgument(f"DHCP host {host}: {host.mac!r} is not a unicast MAC")
        try:
            ip = ipaddress.IPv4Address(host.ip.strip())
        except ValueError as exc:
            raise errors.InvalidArgument(
                f"DHCP host {host}: {host.ip!r} is not an IPv4 address"
            ) from exc
        if subnet is not None and (
            ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address)
        ):
            raise errors.InvalidArgument(
                f"DHCP host {host}: {ip} is not a host address of {subnet}"
            )
        if router is not None and str(ip) == router:
            raise errors.InvalidArgument(f"DHCP host {host}: {ip} is the router's address")
        if host.hostname and not _HOSTNAME.match(host.hostname):
            raise errors.InvalidArgument(
                f"DHCP host {host}: hostname {host.hostname!r} is not a valid DNS label"
            )
        if mac in macs:
            raise errors.InvalidArgument(f"DHCP hosts: MAC {mac} is listed twice")
        if ip in ips:
            raise errors.InvalidArgument(f"DHCP hosts: IP {ip} is listed twice")
        macs.add(mac)
        ips.add(ip)
        hosts.append(DhcpHost(mac, str(ip), host.hostname))
    return sorted(hosts, key=lambda h: (ipaddress.IPv4Address(h.ip), h.mac))


def render_hosts(
    entries: Iterable[HostEntry],
    subnet: ipaddress.IPv4Network | None = None,
    router: str | None = None,
) -> str:
    """The ``--dhcp-hostsfile`` content: one ``MAC,IP[,HOSTNAME]`` line per host."""
    return "".join(f"{h.line()}\n" for h in normalize_hosts(entries, subnet, router))


def parse_bindings(text: str | None) -> set[tuple[str, str]]:
    """The (mac, ip) pairs of a hosts file."""
    pairs = set()
    for line in (text or "").splitlines():
        fields = line.strip().split(",")
        if len(fields) >= 2 and not line.startswith("#"):
            pairs.add((fields[0].lower(), fields[1]))
    return pairs


def scrub_leases(text: str, bindings: set[tuple[str, str]]) -> str:
    """Keep only the leases (``expiry mac ip name client-id`` lines) of current bindings."""
    kept = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and (fields[1].lower(), fields[2]) in bindings:
            kept.append(line + "\n")
    return "".join(kept)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the old file stays, and no temporary
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def readable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can reach and read ``path`` (mode bits only, no ACLs)."""
    pw = pwd.getpwnam(user)
    if pw.pw_uid == 0:
        return True
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def allowed(st: os.stat_result, owner: int, group: int, other: int) -> bool:
        if st.st_uid == pw.pw_uid:
            return bool(st.st_mode & owner)
        if st.st_gid in gids:
            return bool(st.st_mode & group)
        return bool(st.st_mode & other)

    path = path.absolute()
    for parent in reversed(path.parents):
        if not allowed(parent.stat(), stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
    return allowed(path.stat(), stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def stop_leftover(
    state_dir: Path | str, *, dnsmasq: str = "dnsmasq", timeout_s: float = 10.0
) -> int | None:
    """Stop the dnsmasq of ``state_dir`` (one a DhcpServer started, maybe in an earlier
    agent process: its pid file, its command line naming that pid file); the pid
    stopped, None if none ran. Its hosts and lease files are left."""
    pid_path = Path(state_dir).absolute() / PID_FILE
    matches = cmdline_has(Path(dnsmasq).name, f"--pid-file={pid_path}")
    pid = pid_if_ours(read_pid_file(pid_path), matches)
    if pid is None:
        return None
    stop_process(pid, matches, timeout_s)
    pid_path.unlink(missing_ok=True)
    return pid


def forget(state_dir: Path | str) -> None:
    """Remove the hosts and lease files of ``state_dir`` (its dnsmasq stopped: no
    workspace of the node uses the bridge): no binding of a workspace gone stays on the
    node. A dnsmasq started there again begins with the hosts of then."""
    for name in (HOSTS_FILE, LEASES_FILE):
        (Path(state_dir) / name).unlink(missing_ok=True)


class DhcpServer:
    """The dnsmasq of one bridge (DHCP only, static leases only)."""

    def __init__(
        self,
        bridge: str,
        state_dir: Path | str,
        subnet: str,
        *,
        router: str | None = None,
        dns_servers: Sequence[str] = (),
        lease_time_s: int = 3600,
        user: str | None = None,
        command_prefix: Sequence[str] = (),
        dnsmasq: str = "dnsmasq",
        log_dhcp: bool = False,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        """``command_prefix`` (e.g. ``HostEnv.run_prefix()``) must exec, not fork."""
        try:
            net = ipaddress.ip_network(subnet)
        except ValueError as exc:
            raise errors.InvalidArgument(f"DHCP subnet {subnet!r}: {exc}") from exc
        if not isinstance(net, ipaddress.IPv4Network):
            raise errors.InvalidArgument(f"DHCP subnet {subnet}: only IPv4 is served")
        if lease_time_s < MIN_LEASE_TIME_S:
            raise errors.InvalidArgument(
                f"DHCP lease time {lease_time_s} s: dnsmasq needs at least {MIN_LEASE_TIME_S} s"
            )
        self.bridge = bridge
        self.state_dir = Path(state_dir).absolute()
        self.subnet = net
        self.router: str | None = None
        self.dns_servers: tuple[str, ...] = ()
        self._set_options(router, dns_servers)
        self.lease_time_s = lease_time_s
        self.user = user
        self.command_prefix = tuple(command_prefix)
        self.dnsmasq = dnsmasq
        self.log_dhcp = log_dhcp
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.hosts_path = self.state_dir / HOSTS_FILE
        self.leases_path = self.state_dir / LEASES_FILE
        self.pid_path = self.state_dir / PID_FILE
        self.log_path = self.state_dir / LOG_FILE
        self._matches = cmdline_has(Path(dnsmasq).name, f"--pid-file={self.pid_path}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- the command line (pure) -------------------------------------------------------

    def command(self, user: str = "nobody") -> list[str]:
        net = self.subnet
        cmd = [
            self.dnsmasq,
            "--keep-in-foreground",
            "--conf-file=/dev/null",  # never the system's /etc/dnsmasq.conf
            "--port=0",  # no DNS at all
            "--no-hosts",
            "--no-resolv",
            f"--interface={self.bridge}",
            "--bind-interfaces",
            "--except-interface=lo",
            f"--dhcp-range={net.network_address},static,{net.netmask},{self.lease_time_s}",
            "--dhcp-authoritative",
            # Clients are known by their MAC (chaddr) only, as the hosts file names them:
            # a lease found by a client-id another VM may send too (01:<its MAC>) let
            # that VM take the lease over, and the owner's renewal was refused ("lease
            # not found"), so it dropped its address. The filter lets a VM send DHCP for
            # its own MAC only (agent/net/filter.py).
            "--dhcp-ignore-clid",
            f"--dhcp-hostsfile={self.hosts_path}",
            f"--dhcp-leasefile={self.leases_path}",
            f"--pid-file={self.pid_path}",
            # An option without a value sends nothing (dnsmasq would offer itself).
            f"--dhcp-option=option:router,{self.router}" if self.router else "--dhcp-option=3",
        ]
        if self.dns_servers:
            cmd.append(f"--dhcp-option=option:dns-server,{','.join(self.dns_servers)}")
        cmd += [f"--user={user}", "--log-facility=-"]
        if self.log_dhcp:
            cmd.append("--log-dhcp")
        return cmd

    # -- state -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of our running dnsmasq (ours: its command line names our pid file)."""
        return pid_if_ours(read_pid_file(self.pid_path), self._matches)

    def running(self) -> bool:
        return self.pid is not None

    def hosts(self) -> str:
        try:
            return self.hosts_path.read_text()
        except FileNotFoundError:
            return ""

    # -- operations --------------------------------------------------------------------

    def set_hosts(self, entries: Iterable[HostEntry]) -> bool:
        """Make the hosts file list exactly ``entries``; True if anything changed."""
        text = render_hosts(entries, self.subnet, self.router)
        with self._lock:
            self._make_state_dir()
            old = self.hosts_path.read_text() if self.hosts_path.exists() else None
            if old == text:
                return False
            _write_atomic(self.hosts_path, text)
            pid = self.pid
            if pid is None:
                return True  # read at the next start
            gone = parse_bindings(old) - parse_bindings(text)
            if gone:
                log.info("dnsmasq %s: %d binding(s) removed, restarting it", self.bridge, len(gone))
                self._stop_locked()
                self._start_locked()
            else:
                os.kill(pid, signal.SIGHUP)
            return True

    def set_options(self, router: str | None, dns_servers: Sequence[str]) -> bool:
        """Offer this router and these DNS servers from now on; True if they changed.
        A dnsmasq running with others is restarted by the next ``ensure_running``."""
        with self._lock:
            before = (self.router, self.dns_servers)
            self._set_options(router, dns_servers)
            return (self.router, self.dns_servers) != before

    def ensure_running(self) -> int:
        """Start dnsmasq unless it runs with this server's command line (call it
        periodically; an agent restarted with other options, or ``set_options``, restarts
        it); returns its pid."""
        with self._lock:
            self._trim_log()
            if self._proc is not None and self._proc.poll() is not None:
                log.warning(
                    "dnsmasq %s exited (status %s); restarting it",
                    self.bridge,
                    self._proc.returncode,
                )
                self._proc = None
            pid = self.pid
            if pid is not None:
                running = process_cmdline(pid) or []
                user = next((a[7:] for a in running if a.startswith("--user=")), "nobody")
                if running[1:] == self.command(user)[1:]:
                    return pid
                log.info(
                    "dnsmasq %s: its options changed (router %s, DNS servers %s); restarting it",
                    self.bridge,
                    self.router or "none",
                    ",".join(self.dns_servers) or "none",
                )
                self._stop_locked()
            return self._start_locked()

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    # -- internals ---------------------------------------------------------------------

    def _set_options(self, router: str | None, dns_servers: Sequence[str]) -> None:
        if router is not None and ipaddress.IPv4Address(router) not in self.subnet:
            raise errors.InvalidArgument(f"DHCP router {router} is not in {self.subnet}")
        self.router = router
        self.dns_servers = tuple(str(ipaddress.IPv4Address(s)) for s in dns_servers)

    def _make_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)

    def _run_as(self) -> str:
        if self.user is not None:
            if not readable_by(self.hosts_path, self.user):
                raise errors.FailedPrecondition(
                    f"dnsmasq runs as {self.user} and cannot read {self.hosts_path}: make its"
                    " directories traversable (chmod o+x) or run dnsmasq as root"
                )
            return self.user
        if readable_by(self.hosts_path, "nobody"):
            return "nobody"
        log.warning(
            "dnsmasq %s runs as root: nobody cannot read %s (a parent directory is not o+x)",
            self.bridge,
            self.hosts_path,
        )
        return "root"

    def _start_locked(self) -> int:
        self._make_state_dir()
        if not self.hosts_path.exists():
            _write_atomic(self.hosts_path, "")
        if self.leases_path.exists():
            leases = self.leases_path.read_text()
            kept = scrub_leases(leases, parse_bindings(self.hosts()))
            if kept != leases:
                _write_atomic(self.leases_path, kept, LEASES_MODE)
        # The leases name every VM's MAC, address and hostname: 0600, the agent's (root's)
        # alone. dnsmasq opens the file as root before it drops privileges, creating it
        # under its own umask (022: 0644) when missing, and rewrites it in place through
        # that open file: made here first (or one an earlier version left 0644 chmod-ed),
        # the file keeps this mode for as long as dnsmasq runs.
        os.close(private_fd(self.leases_path, os.O_RDONLY, LEASES_MODE))
        self.pid_path.unlink(missing_ok=True)
        cmd = [*self.command_prefix, *self.command(self._run_as())]
        log.info("dnsmasq %s: starting %s", self.bridge, shlex.join(cmd))
        # 0600: the log names every VM's MAC and address (the agent's alone).
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # one an earlier version made under the umask
        with os.fdopen(fd, "ab") as out:
            out.write(f"--- {time.ctime()}: {shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the agent; no terminal signals
                close_fds=True,
            )
        self._proc = proc
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            pid = self.pid  # dnsmasq writes its pid file once its socket is bound
            if pid is not None:
                return pid
            if proc.poll() is not None:
                self._proc = None
                raise errors.Unavailable(
                    f"dnsmasq for bridge {self.bridge} exited at start (status"
                    f" {proc.returncode}):\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                self._proc = None
                raise errors.Unavailable(
                    f"dnsmasq for bridge {self.bridge} did not start within"
                    f" {self.start_timeout_s:.0f} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _stop_locked(self) -> None:
        stop_process(self.pid, self._matches, self.stop_timeout_s)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
            self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def _trim_log(self) -> None:
        """Past ``LOG_MAX_BYTES``, copy the log to ``dnsmasq.log.1`` and empty it."""
        try:
            if self.log_path.stat().st_size <= LOG_MAX_BYTES:
                return
            old = self.log_path.with_name(LOG_FILE + ".1")
            # 0600 as the log, also one an earlier version made under the umask.
            fd = private_fd(old, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(fd, "wb") as out, self.log_path.open("r+b") as f:
                shutil.copyfileobj(f, out)
                f.truncate(0)
        except FileNotFoundError:
            return  # no log yet (dnsmasq not started): nothing to trim
        except OSError as exc:
            log.warning("dnsmasq %s: cannot trim %s: %s", self.bridge, self.log_path, exc)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
