"""The local all-in-one site: one service and one or more agents on this machine.

``ws-admin site up`` writes ``service.toml`` and ``agent.toml`` into the site
directory (default ``$WS_SITE_DIR`` or ``~/.local/share/workspace/site``), starts
``python -m workspace.service.main`` and ``python -m agent.main`` in the background
(each in its own session, logs in the site directory) and records their pids and
the service address in ``site.json``. The service listens on a unix socket in the
site directory, which stays reachable when the site runs in a network namespace.

With the fake driver no network traffic exists at all. With the libvirt driver the
service, the agent, a private libvirtd, the bridges and the VMs all live in the
site's own network namespace (``workspace.site.hostenv``).

``--nodes N`` (N > 1) simulates N hosts: agents ``local-1`` .. ``local-N``, each with
its files in ``<site>/nodes/<node>/`` and, with the libvirt driver, its own network
namespace and private libvirtd (so its own ``wsbr0`` bridge and dnsmasq); the
service then runs in the host's network namespace. The namespaces are not connected
to each other (no L2 between nodes). See docs/design/host-environment.md.

``site down`` stops exactly the recorded processes (after checking that each pid
still runs our command line: never by name), removes the namespaces of a libvirt
site and leaves the data in place. Stale records after a crash are harmless: the
next ``site up`` starts whatever is not running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from workspace import errors
from workspace.v1 import admin_pb2

SITE_ENV = "WS_SITE_DIR"
SITE_FILE = "site.json"
SERVICE_MODULE = "workspace.service.main"
AGENT_MODULE = "agent.main"
NODE_NAME = "local"
AGENT_CONFIG = "agent.toml"
AGENT_LOG = "agent.log"
NODES_DIR = "nodes"  # <site>/nodes/<node>/ on a site of several nodes
MAX_NODES = 16
DRIVERS = ("fake", "libvirt")
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 90.0
# sun_path is 108 bytes including the terminating NUL.
_UNIX_PATH_MAX = 107


@dataclasses.dataclass(frozen=True)
class NetworkDefaults:
    name: str = "default"
    subnet: str = "10.213.0.0/24"
    gateway: str = "10.213.0.1"
    bridge: str = "wsbr0"


DEFAULT_NETWORK = NetworkDefaults()


class SiteError(errors.FailedPrecondition):
    """The local site cannot be started, stopped or read."""


class HostEnvLike(Protocol):
    """What we use of workspace.site.hostenv.HostEnv."""

    libvirt_uri: str

    def up(self) -> object: ...

    def down(self) -> object: ...

    def run_prefix(self) -> list[str]: ...

    def running(self) -> bool: ...


def default_site_dir() -> Path:
    env = os.environ.get(SITE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "workspace" / "site"


@dataclasses.dataclass
class AgentRecord:
    """One node of the site: its agent's pid, network namespace and directory.

    ``dir`` holds the node's ``agent.toml``, ``agent.log``, ``agent/`` (state and image
    cache) and, with the libvirt driver, ``libvirt/`` (its private libvirtd).
    """

    node: str
    pid: int = 0
    netns: str = ""
    dir: str = ""

    @property
    def config(self) -> Path:
        return Path(self.dir) / AGENT_CONFIG

    @property
    def log(self) -> Path:
        return Path(self.dir) / AGENT_LOG


@dataclasses.dataclass
class SiteRecord:
    """Contents of site.json: what is running and how to reach it.

    ``agents`` lists every node (one for a one-node site). ``node``, ``agent_pid`` and
    ``netns`` are node 1's, kept for readers of the one-node format; a record without
    ``agents`` (written before there could be several) reads as that one node.
    ``service_netns`` is the namespace the service runs in ("" = the host's).
    """

    dir: str
    address: str
    driver: str
    node: str = NODE_NAME
    service_pid: int = 0
    agent_pid: int = 0
    netns: str = ""
    virt_type: str = ""
    started_at: float = 0.0
    agents: list[AgentRecord] = dataclasses.field(default_factory=list)
    service_netns: str = ""

    def sync_first_node(self) -> None:
        """Copy node 1 into the one-node fields."""
        if self.agents:
            first = self.agents[0]
            self.node, self.agent_pid, self.netns = first.node, first.pid, first.netns

    def netns_names(self) -> list[str]:
        names = [a.netns for a in self.agents if a.netns]
        return names or ([self.netns] if self.netns else [])

    def to_json(self) -> str:
        self.sync_first_node()
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def read_record(site_dir: str | os.PathLike[str]) -> SiteRecord | None:
    """The site record in ``site_dir``, or None when no site was started there."""
    path = Path(site_dir) / SITE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SiteError(f"{path} is not a valid site record ({exc}); remove it") from exc
    if not isinstance(data, dict):
        raise SiteError(f"{path} is not a valid site record; remove it")
    known = {f.name for f in dataclasses.fields(SiteRecord)}
    agent_known = {f.name for f in dataclasses.fields(AgentRecord)}
    try:
        rec = SiteRecord(**{k: v for k, v in data.items() if k in known and k != "agents"})
        agents = data.get("agents") or []
        if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
            raise TypeError("'agents' must be a list of objects")
        rec.agents = [
            AgentRecord(**{k: v for k, v in a.items() if k in agent_known}) for a in agents
        ]
        if not rec.agents:  # the one-node format
            rec.agents = [AgentRecord(rec.node, rec.agent_pid, rec.netns, rec.dir)]
    except TypeError as exc:
        raise SiteError(f"{path} is not a valid site record ({exc}); remove it") from exc
    return rec


def write_record(site_dir: Path, record: SiteRecord) -> None:
    path = site_dir / SITE_FILE
    tmp = path.with_name(SITE_FILE + ".tmp")
    tmp.write_text(record.to_json())
    os.replace(tmp, path)


# -- processes (by recorded pid only) ----------------------------------------------------


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of ``pid``, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[3])


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        # A zombie child of ours: reap it.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def process_matches(pid: int, module: str, config: str | os.PathLike[str]) -> bool:
    """True if ``pid`` is alive and runs ``-m module --config config`` (our daemon)."""
    if pid <= 0 or not _alive(pid):
        return False
    args = _proc_cmdline(pid)
    return bool(args) and module in args and str(config) in args  # type: ignore[operator]


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None and st[1] == sid and st[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _signal_and_wait(pids: list[int], timeout_s: float) -> bool:
    """SIGTERM ``pids``, wait up to ``timeout_s``, SIGKILL survivors; True if any was killed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    killed = False
    for pid in pids:
        if _alive(pid):
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return killed


def stop_process(
    pid: int, module: str, config: str | os.PathLike[str], timeout_s: float = STOP_TIMEOUT_S
) -> str:
    """Stop one recorded daemon and whatever is left of the session it leads.

    Signals ``pid`` only if /proc/<pid>/cmdline is still our daemon's; a pid now used
    by another program is left alone. Returns what happened, for the user.
    """
    if pid <= 0:
        return "not started"
    if _alive(pid):
        if not process_matches(pid, module, config):
            return f"pid {pid} is no longer ours (left alone)"
        outcome = "killed" if _signal_and_wait([pid], timeout_s) else "stopped"
    else:
        outcome = "not running"
    # Started with start_new_session: its session id is its pid. While the leader is
    # gone, no other process can hold that pid, so members are our daemon's children.
    if not _alive(pid):
        rest = _session_members(pid)
        if rest:
            _signal_and_wait(rest, 2.0)
            outcome += f" (+{len(rest)} child process(es))"
    return outcome


# -- the site ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """Where one node of the local site lives."""

    name: str
    dir: Path
    netns: str

    @property
    def config(self) -> Path:
        return self.dir / AGENT_CONFIG

    @property
    def log(self) -> Path:
        return self.dir / AGENT_LOG

    @property
    def state_dir(self) -> Path:
        return self.dir / "agent"


@dataclasses.dataclass(frozen=True)
class UpResult:
    record: SiteRecord
    already_running: bool


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(value)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail)


class LocalSite:
    """The all-in-one site in one directory: a service and ``nodes`` agents.

    One node (the default) is named ``local`` and keeps its files in the site
    directory itself. With ``nodes`` = N > 1 the nodes are ``local-1`` .. ``local-N``,
    each in ``<site>/nodes/<name>/`` (own agent config, log, state dir and image
    cache) and, with the libvirt driver, in a network namespace of its own with its
    own private libvirtd, bridge and dnsmasq, like separate hosts. The service then
    runs in the host's network namespace (it needs no network: it listens on the unix
    socket in the site directory); a one-node site keeps it in the node's namespace.
    """

    def __init__(
        self,
        site_dir: str | os.PathLike[str] | None = None,
        driver: str | None = None,
        virt_type: str | None = None,
        node: str = NODE_NAME,
        say: Callable[[str], None] | None = None,
        nodes: int | None = None,
    ) -> None:
        if driver is not None and driver not in DRIVERS:
            raise errors.InvalidArgument(f"unknown driver {driver!r}: use one of {DRIVERS}")
        if nodes is not None and not 1 <= nodes <= MAX_NODES:
            raise errors.InvalidArgument(f"--nodes {nodes}: give 1 to {MAX_NODES}")
        self.dir = Path(site_dir if site_dir is not None else default_site_dir())
        self.dir = self.dir.expanduser().resolve()
        # None: what the site ran with last time, else fake / qemu (TCG) / 1 node.
        self._driver = driver
        self._virt_type = virt_type
        self._nodes = nodes
        self.driver = driver or "fake"
        self.virt_type = virt_type or "qemu"
        self.nodes = nodes or 1
        self.node = node
        self._say = say or (lambda _msg: None)

    # -- paths -------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.dir / "service.sock"

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def service_config(self) -> Path:
        return self.dir / "service.toml"

    @property
    def agent_config(self) -> Path:
        """Node 1's agent config (the only one on a one-node site)."""
        return self.node_specs()[0].config

    @property
    def service_log(self) -> Path:
        return self.dir / "service.log"

    @property
    def agent_log(self) -> Path:
        """Node 1's agent log (the only one on a one-node site)."""
        return self.node_specs()[0].log

    @property
    def netns_name(self) -> str:
        return "ws-" + hashlib.sha1(str(self.dir).encode()).hexdigest()[:8]

    def node_specs(self, count: int | None = None) -> list[NodeSpec]:
        """The nodes of a site of ``count`` nodes (default: this site's number)."""
        count = count or self.nodes
        if count == 1:
            return [NodeSpec(self.node, self.dir, self.netns_name)]
        return [
            NodeSpec(
                f"{self.node}-{i}",
                self.dir / NODES_DIR / f"{self.node}-{i}",
                f"{self.netns_name}-{i}",
            )
            for i in range(1, count + 1)
        ]

    def record(self) -> SiteRecord | None:
        return read_record(self.dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "site.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _hostenv(self, netns: str, node_dir: Path | None = None) -> HostEnvLike:
        """The host environment (netns + private libvirtd) of the node in ``node_dir``."""
        from workspace.site import hostenv

        env: HostEnvLike = hostenv.HostEnv(node_dir or self.dir, netns)
        return env

    def _node_env(self, netns: str, node_dir: str | Path) -> HostEnvLike:
        node_dir = Path(node_dir)
        return self._hostenv(netns) if node_dir == self.dir else self._hostenv(netns, node_dir)

    # -- config files ------------------------------------------------------------------

    def _write_configs(self, libvirt_uri: str | Mapping[str, str]) -> None:
        """service.toml and each node's agent.toml; ``libvirt_uri`` may be per node."""

        def header(name: str) -> str:
            return (
                "# Generated by `ws-admin site up` for the local all-in-one site in\n"
                f"# {self.dir}; rewritten at every start. Every key and its default is\n"
                f"# documented in conf/{name} of the workspace-service sources.\n"
            )

        service = header("service.toml") + (
            "\n# A unix socket: reachable from outside the site's network namespace.\n"
            f"listen = {_toml(self.address)}\n"
            "# The store (SQLite) and the image blobs.\n"
            f"data_dir = {_toml(str(self.dir / 'service'))}\n"
            "heartbeat_interval_s = 5\n"
            "node_grace_s = 40\n"
            'log_level = "INFO"\n'
        )
        self.service_config.write_text(service)
        specs = self.node_specs()
        for spec in specs:
            uri = libvirt_uri if isinstance(libvirt_uri, str) else libvirt_uri.get(spec.name, "")
            spec.dir.mkdir(parents=True, exist_ok=True)
            spec.config.write_text(header("agent.toml") + self._agent_config(spec, uri, specs))

    def _agent_config(self, spec: NodeSpec, libvirt_uri: str, specs: list[NodeSpec]) -> str:
        several = len(specs) > 1
        text = (
            (
                f"\n# Node {specs.index(spec) + 1} of {len(specs)} on this machine.\n"
                if several
                else "\n"
            )
            + f"node = {_toml(spec.name)}\n"
            f"service = {_toml(self.address)}\n"
            f"driver = {_toml(self.driver)}\n"
            "# Image cache, per-VM disks, console logs.\n"
            f"state_dir = {_toml(str(spec.state_dir))}\n"
            f"cache_dir = {_toml(str(spec.state_dir / 'cache'))}\n"
            "# Capacity to announce: 0 = what this host has"
            + (" (every node of the site announces all of it).\n" if several else ".\n")
            + "cpus = 0\n"
            "memory_mib = 0\n"
            "disk_gib = 0\n"
            'log_level = "INFO"\n'
            "\n[[networks]]\n"
            f"name = {_toml(DEFAULT_NETWORK.name)}\n"
        )
        if self.driver == "fake":
            return text + (
                "# The fake driver has no traffic: no bridge address, no DHCP server.\n"
                'bridge_address = ""\n'
                "dhcp = false\n"
                "\n[fake]\n"
                "# Fake domains survive an agent restart, as libvirt's do.\n"
                "persist = true\n"
            )
        return text + (
            "# The bridge lives in the node's network namespace.\n"
            'bridge_address = "gateway"\n'
            "dhcp = true\n"
            "\n[libvirt]\n"
            "# The node's private libvirtd (workspace.site.hostenv).\n"
            f"uri = {_toml(libvirt_uri)}\n"
            '# "qemu" (TCG) where nested KVM does not work, "kvm" on real hosts.\n'
            f"virt_type = {_toml(self.virt_type)}\n"
        )

    # -- start -------------------------------------------------------------------------

    def _spawn(self, module: str, config: Path, log_path: Path, prefix: list[str]) -> Any:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [*prefix, sys.executable, "-m", module, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )

    def up(self, timeout_s: float = START_TIMEOUT_S) -> UpResult:
        """Start whatever of the site is not running; wait until every node is READY."""
        if len(str(self.socket_path)) > _UNIX_PATH_MAX:
            raise SiteError(
                f"site directory {self.dir} is too long for a unix socket path "
                f"({len(str(self.socket_path))} > {_UNIX_PATH_MAX} bytes); use a shorter --dir"
            )
        with self._locked():
            old = read_record(self.dir)
            if old is not None:
                count = len(old.agents)
                if self._nodes is not None and self._nodes != count:
                    raise SiteError(
                        f"the site in {self.dir} was started with {count} node(s), not "
                        f"{self._nodes}; run `ws-admin site down` first (its data stay)"
                    )
                self.nodes = count
            svc_alive = old is not None and process_matches(
                old.service_pid, SERVICE_MODULE, self.service_config
            )
            agents_alive = {
                a.node
                for a in (old.agents if old is not None else [])
                if process_matches(a.pid, AGENT_MODULE, a.config)
            }
            everything = old is not None and svc_alive and len(agents_alive) == len(old.agents)
            if old is not None and everything and self._hostenvs_running(old):
                return UpResult(old, already_running=True)
            if old is not None:
                self.driver = self._driver or old.driver
                self.virt_type = self._virt_type or old.virt_type or "qemu"
            if old is not None and (svc_alive or agents_alive) and old.driver != self.driver:
                raise SiteError(
                    f"the site in {self.dir} is partly running with driver {old.driver}; "
                    "run `ws-admin site down` first"
                )
            if old is not None and old.netns_names() and self.driver != "libvirt":
                raise SiteError(
                    f"the site in {self.dir} was started with driver {old.driver} and its "
                    f"network namespace(s) {', '.join(old.netns_names())} may still exist; "
                    "run `ws-admin site down` first"
                )
            return self._start(old, svc_alive, agents_alive, timeout_s)

    def _hostenvs_running(self, rec: SiteRecord) -> bool:
        """True unless a node's namespace or private libvirtd is gone (libvirt sites)."""
        if rec.driver != "libvirt":
            return True
        return all(self._node_env(a.netns, a.dir).running() for a in rec.agents if a.netns)

    def _start(
        self,
        old: SiteRecord | None,
        svc_alive: bool,
        agents_alive: set[str],
        timeout_s: float,
    ) -> UpResult:
        specs = self.node_specs()
        libvirt = self.driver == "libvirt"
        old_pids = {a.node: a.pid for a in old.agents} if old is not None else {}
        rec = SiteRecord(
            dir=str(self.dir),
            address=self.address,
            driver=self.driver,
            service_pid=old.service_pid if old is not None and svc_alive else 0,
            virt_type=self.virt_type if libvirt else "",
            started_at=time.time(),
            agents=[
                AgentRecord(
                    node=spec.name,
                    pid=old_pids.get(spec.name, 0) if spec.name in agents_alive else 0,
                    netns=spec.netns if libvirt else "",
                    dir=str(spec.dir),
                )
                for spec in specs
            ],
        )
        rec.sync_first_node()
        prefixes: dict[str, list[str]] = {spec.name: [] for spec in specs}
        uris: dict[str, str] = {spec.name: "" for spec in specs}
        if libvirt:
            # A one-node site keeps its service in the node's namespace (as it always
            # did); with several nodes it runs in the host's: it needs no network.
            rec.service_netns = specs[0].netns if len(specs) == 1 else ""
            # Recorded first, so that `site down` can clean up a half-made host env.
            write_record(self.dir, rec)
            for spec in specs:
                who = f" for node {spec.name}" if len(specs) > 1 else ""
                self._say(f"setting up network namespace {spec.netns} and its libvirtd{who}")
                env = self._node_env(spec.netns, spec.dir)
                env.up()
                prefixes[spec.name] = list(env.run_prefix())
                uris[spec.name] = env.libvirt_uri
        self._write_configs(uris)
        service_prefix = prefixes[specs[0].name] if rec.service_netns else []
        started: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        try:
            if not svc_alive:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                        self.socket_path.unlink()
                self._say(f"starting workspace-service (log {self.service_log})")
                proc = self._spawn(
                    SERVICE_MODULE, self.service_config, self.service_log, service_prefix
                )
                started.append(("service", proc))
                rec.service_pid = proc.pid
                write_record(self.dir, rec)
            self._wait_healthy(started, deadline)
            self._ensure_network()
            for spec, agent in zip(specs, rec.agents, strict=True):
                if spec.name in agents_alive:
                    continue
                who = f" for node {spec.name}" if len(specs) > 1 else ""
                self._say(f"starting workspace-agent{who} (log {spec.log})")
                proc = self._spawn(AGENT_MODULE, spec.config, spec.log, prefixes[spec.name])
                started.append((spec.name, proc))
                agent.pid = proc.pid
                write_record(self.dir, rec)
            self._wait_node_ready(started, deadline)
        except BaseException:
            self._abort(rec, started)
            raise
        return UpResult(rec, already_running=False)

    def _abort(self, rec: SiteRecord, started: list[tuple[str, Any]]) -> None:
        """Stop what this start launched (it did not come up)."""
        for name, proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if name == "service":
                rec.service_pid = 0
            for agent in rec.agents:
                if agent.node == name:
                    agent.pid = 0
        if rec.service_pid or any(a.pid for a in rec.agents) or rec.netns_names():
            write_record(self.dir, rec)
        else:
            (self.dir / SITE_FILE).unlink(missing_ok=True)

    def _log_of(self, name: str) -> Path:
        if name == "service":
            return self.service_log
        return next((s.log for s in self.node_specs() if s.name == name), self.agent_log)

    def _check_started(self, started: list[tuple[str, Any]]) -> None:
        for name, proc in started:
            code = proc.poll()
            if code is not None:
                what = "service" if name == "service" else f"agent of node {name}"
                log = self._log_of(name)
                raise SiteError(
                    f"the {what} exited with status {code} while starting; "
                    f"last lines of {log}:\n{_log_tail(log)}"
                )

    def _client(self, timeout_s: float = 5.0) -> Any:
        from workspace.client import Client

        return Client(self.address, timeout_s=timeout_s)

    def _wait_healthy(self, started: list[tuple[str, Any]], deadline: float) -> None:
        last = ""
        with self._client(timeout_s=2.0) as client:
            while True:
                self._check_started(started)
                try:
                    status = client.health()
                    if status == "SERVING":
                        return
                    last = f"health status {status}"
                except errors.WorkspaceError as exc:
                    last = exc.message
                if time.monotonic() > deadline:
                    raise SiteError(
                        f"the service at {self.address} did not become healthy ({last}); "
                        f"last lines of {self.service_log}:\n{_log_tail(self.service_log)}"
                    )
                time.sleep(0.1)

    def _ensure_network(self) -> None:
        with self._client() as client:
            if client.list_networks():
                return
            net = DEFAULT_NETWORK
            self._say(f"creating network {net.name} ({net.subnet}, bridge {net.bridge})")
            with contextlib.suppress(errors.AlreadyExists):
                client.create_network(net.name, net.subnet, gateway=net.gateway, bridge=net.bridge)

    def _wait_node_ready(self, started: list[tuple[str, Any]], deadline: float) -> None:
        ready = admin_pb2.NodeState.NODE_STATE_READY
        waiting = [spec.name for spec in self.node_specs()]
        last = "not registered"
        with self._client() as client:
            while True:
                self._check_started(started)
                try:
                    nodes = {n.name: n for n in client.list_nodes()}
                    waiting = [
                        name for name in waiting if name not in nodes or nodes[name].state != ready
                    ]
                    if not waiting:
                        return
                    node = nodes.get(waiting[0])
                    last = "not registered"
                    if node is not None:
                        last = admin_pb2.NodeState.Name(node.state).removeprefix("NODE_STATE_")
                except errors.Unavailable as exc:
                    last = exc.message
                if time.monotonic() > deadline:
                    log = self._log_of(waiting[0])
                    raise SiteError(
                        f"node {waiting[0]} did not become READY ({last}); "
                        f"last lines of {log}:\n{_log_tail(log)}"
                    )
                time.sleep(0.2)

    # -- stop --------------------------------------------------------------------------

    def down(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop the recorded processes (and a libvirt site's namespaces); keep the data."""
        with self._locked():
            rec = read_record(self.dir)
            if rec is None:
                return [f"no site running in {self.dir}"]
            several = len(rec.agents) > 1
            done = [
                ("agent" + (f" {a.node}" if several else "") + ": ")
                + stop_process(a.pid, AGENT_MODULE, a.config, timeout_s)
                for a in rec.agents
            ]
            done.append(
                "service: "
                + stop_process(rec.service_pid, SERVICE_MODULE, self.service_config, timeout_s)
            )
            for agent in rec.agents:
                if agent.netns:
                    self._node_env(agent.netns, agent.dir).down()
                    done.append(f"network namespace {agent.netns}: removed with its VMs")
            if not any(a.netns for a in rec.agents) and rec.netns:
                self._hostenv(rec.netns).down()  # a record from before per-node namespaces
                done.append(f"network namespace {rec.netns}: removed with its VMs")
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                    self.socket_path.unlink()
            (self.dir / SITE_FILE).unlink(missing_ok=True)
            return done

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What runs, whether the service answers and in which state every node is."""
        rec = read_record(self.dir)
        out: dict[str, Any] = {"dir": str(self.dir), "state": "stopped"}
        if rec is None:
            return out
        svc = process_matches(rec.service_pid, SERVICE_MODULE, self.service_config)
        running = {a.node: process_matches(a.pid, AGENT_MODULE, a.config) for a in rec.agents}
        first = rec.agents[0]
        out.update(
            address=rec.address,
            driver=rec.driver,
            netns=rec.netns,
            service={
                "pid": rec.service_pid,
                "running": svc,
                "log": str(self.service_log),
                "netns": rec.service_netns,
            },
            agent={"pid": first.pid, "running": running[first.node], "log": str(first.log)},
        )
        health = ""
        states: dict[str, str] = {}
        if svc:
            try:
                with self._client(timeout_s=3.0) as client:
                    health = client.health()
                    for n in client.list_nodes():
                        state = admin_pb2.NodeState.Name(n.state)
                        states[n.name] = state.removeprefix("NODE_STATE_")
            except errors.WorkspaceError as exc:
                health = health or f"error: {exc.message}"
        out["health"] = health
        out["node"] = {"name": first.node, "state": states.get(first.node, "UNKNOWN")}
        out["agents"] = [
            {
                "node": a.node,
                "pid": a.pid,
                "running": running[a.node],
                "state": states.get(a.node, "UNKNOWN"),
                "netns": a.netns,
                "log": str(a.log),
            }
            for a in rec.agents
        ]
        ok = (
            svc
            and all(running.values())
            and health == "SERVING"
            and all(states.get(a.node) == "READY" for a in rec.agents)
        )
        out["state"] = "running" if ok else "degraded"
        return out
